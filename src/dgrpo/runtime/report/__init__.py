"""The run report: what a person reads after `dgrpo run`, built from the run's records in the store.

`summary` is the markdown report and the terminal summary; `page.render_html` is the self-contained HTML report
(image grids, curves, the Pareto plot, lineage and recipe) of one run or several runs overlaid; `data` gathers
what both show.
"""

from dgrpo.runtime.report.page import render_html, write_html
from dgrpo.runtime.report.summary import (
    build_report,
    dumps,
    evaluation_markdown,
    format_report,
    load_events,
    summary_lines,
)

__all__ = ["build_report", "dumps", "evaluation_markdown", "format_report", "load_events", "render_html",
           "summary_lines", "write_html"]
