"""A fine-tune's records in the store, in one place: their keys (`keys`), their types (`records`), who owns the
fine-tune (`ownership`), its committed rounds (`commits`), its segments (`segments`), what its stages leave per round
(`evaluations`), every artifact's lineage record (`lineage`), and the passes over all of them (`archive`) or files
passed between processes (`exchange`).

Below the stages: the stages commit and record through it, the runtime reads it; it imports only the store.
"""
