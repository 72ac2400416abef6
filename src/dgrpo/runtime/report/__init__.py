"""The run report: what a person reads after `dgrpo run`, built from the run's records in the store.

`summary` is the markdown report, the terminal summary and an evaluation's Markdown view; `page` is the
self-contained HTML report (image grids, curves, the Pareto plot, lineage and recipe) of one run or several runs
overlaid; `data` gathers what the page shows. The page (and matplotlib) is imported only when one is rendered:
every stage process imports this package for the Markdown view and should not pay for plotting.
"""

from pathlib import Path

from dgrpo.runtime.report.summary import (
    build_report,
    evaluation_markdown,
    format_report,
    load_events,
    located_uri,
    round_means,
    round_metric_means,
    save_report,
    summary_lines,
)
from dgrpo.store import ArtifactStore


def render_html(store: ArtifactStore, run_ids: list[str]) -> str:
    """The HTML report of `run_ids` (one run, or several overlaid): `dgrpo.runtime.report.page.render_html`."""
    from dgrpo.runtime.report.page import render_html as render

    return render(store, run_ids)


def write_html(store: ArtifactStore, run_ids: list[str], path: str | Path) -> Path:
    """Render the HTML report and write it to `path` atomically: `dgrpo.runtime.report.page.write_html`."""
    from dgrpo.runtime.report.page import write_html as write

    return write(store, run_ids, path)


__all__ = ["build_report", "evaluation_markdown", "format_report", "load_events", "located_uri", "render_html",
           "round_means", "round_metric_means", "save_report", "summary_lines", "write_html"]
