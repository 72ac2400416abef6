"""The toy experiment lab (`dgrpo experiment`, docs/experiment.md): does DiverseGRPO keep diversity at matched quality?

It sits above the library: it trains the toy world's preset arms through the in-process engine, reads back what
the runs recorded, and writes tables, goals, a report and a plot. The toy world itself (`dgrpo.toyworld`) stays a
leaf plug-in that knows nothing of engines or experiments.

`arms` (the presets compared), `seeds` (tuning against evaluation seeds), `run` (training them, then the outputs),
`measures` (what each run's records say), `columns` (what the tables hold), `analysis` (means over seeds, matched
quality), `goals` (the decisions docs/experiment.md#goals names), `report` (Markdown and CSV) and `plot`.
"""
