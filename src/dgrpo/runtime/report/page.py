"""The HTML run report: one self-contained file (images as data URIs, plots as inline SVG, no script, nothing
fetched), so it opens from a laptop's disk, a KFP HTML artifact or an e-mail alike.

It holds each evaluation's image grid (the same seeds every round, so a change is the policy's), the evaluation
measures and the training reward over rounds, the quality-against-diversity plot, the final adapter's lineage and
the recipe. Several runs overlay on every plot, for comparing methods.
"""

import base64
import datetime
import html
import io
from pathlib import Path

import yaml
from PIL import Image

from dgrpo.files import atomic_write_text
from dgrpo.runs.lineage import code_version
from dgrpo.runtime.report import plots
from dgrpo.runtime.report.data import Evaluation, RunData, load_run, quality_key
from dgrpo.runtime.report.headline import flatten, non_default_fields
from dgrpo.runtime.report.summary import evaluation_label, located_uri
from dgrpo.store import ArtifactRef, ArtifactStore

MAX_GRID_WIDTH = 1600
"""Grids wider than this (real models' 512 px images) are downscaled for the page; the store keeps the original."""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; } .plots figure { margin: 0; }
figure.grid { display: inline-block; margin: .5em 1.5em .5em 0; vertical-align: top; }
.grid-body { display: flex; align-items: stretch; }
.labels { display: flex; flex-direction: column; font-size: .8em; margin-right: .5em; text-align: right; }
.labels span { flex: 1; display: flex; align-items: center; justify-content: flex-end; }
.pixelated { image-rendering: pixelated; }
table { border-collapse: collapse; font-size: .85em; } td, th { border: 1px solid #ddd; padding: .2em .5em; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .8em; }
.note { color: #555; font-size: .9em; }
.headline { font-size: 1.05em; background: #f4f7fb; border-left: 4px solid #4a78b0; padding: .4em .8em; }
"""


def render_html(store: ArtifactStore, run_ids: list[str]) -> str:
    """The report of `run_ids` (one run, or several overlaid) in `store`, as one HTML document."""
    if not run_ids:
        raise ValueError("render_html: give at least one run id")
    runs = [load_run(store, r) for r in run_ids]
    title = f"dgrpo run {runs[0].run_id}" if len(runs) == 1 else "dgrpo runs " + ", ".join(r.run_id for r in runs)
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    parts = [f"<h1>{_e(title)}</h1>",
             f'<p class="note">store {_e(store.uri)}; rendered {now} by dgrpo {_e(code_version())}</p>',
             *(_headline(run, named=len(runs) > 1) for run in runs), _summary_table(runs), _plots(runs),
             *(_grids(store, run, len(runs) > 1) for run in runs),
             *(_lineage(store, run) for run in runs), _recipes(runs)]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_html(store: ArtifactStore, run_ids: list[str], path: str | Path) -> Path:
    """Render the report and write it to `path` atomically (a reader never sees half a file)."""
    return atomic_write_text(path, render_html(store, run_ids))


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _headline(run: RunData, named: bool) -> str:
    """What ran and the verdict (`report.headline`), first thing on the page."""
    if run.headline is None:
        return ""
    h = run.headline
    verdict = f"<br><strong>Verdict:</strong> {_e(h.verdict)}"
    line = h.line().split(" Verdict: ", 1)[0]
    return f'<p class="headline">{"<strong>" + _e(run.run_id) + "</strong>: " if named else ""}{_e(line)}{verdict}</p>'


def _summary_table(runs: list[RunData]) -> str:
    keys = plots.evaluation_metrics(runs)
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    rows = []
    for run in runs:
        for ev in (run.evaluations[0], run.evaluations[-1]) if len(run.evaluations) > 1 else run.evaluations:
            cells = "".join(f'<td class="num">{ev.metrics[k]:.4g}</td>' if k in ev.metrics else "<td>-</td>"
                            for k in keys)
            rows.append(f"<tr><td>{_e(run.run_id)}</td><td>{_e(evaluation_label(ev.round))}</td>{cells}</tr>")
    reward = next((ev.reward for run in runs for ev in run.evaluations if ev.reward), None)
    note = (f'<p class="note">Evaluation reward: {_e(reward["name"])}: {_e(reward["why"])}.</p>' if reward else "")
    return (f"<h2>Summary</h2><p class='note'>First and last evaluation, means over the evaluation prompts.</p>"
            f"<table><tr><th>run</th><th>evaluation</th>{head}</tr>{''.join(rows)}</table>{note}"
            f"{_throughput(runs)}")


def _throughput(runs: list[RunData]) -> str:
    """Each run's images/s and s/round from its records' times (dgrpo.runtime.report.throughput)."""
    rows = []
    for run in runs:
        t = run.throughput
        if t is None:
            rows.append(f"<tr><td>{_e(run.run_id)}</td><td colspan='4'>not measured: no two rounds of one segment "
                        "recorded with their times</td></tr>")
            continue
        startup = "-" if t.seconds_per_round_with_startup is None else f"{t.seconds_per_round_with_startup:.3g}"
        rows.append(f"<tr><td>{_e(run.run_id)}</td><td class='num'>{t.images_per_s:.3g}</td>"
                    f"<td class='num'>{t.seconds_per_round:.3g}</td><td class='num'>{t.rounds_measured}</td>"
                    f"<td class='num'>{startup}</td></tr>")
    note = ("Wall clock, all of the run's GPUs together: between the ends of consecutive rounds of one segment; "
            "the last column adds each segment's start-up (pods, imports, model loads) to its rounds.")
    return (f"<p class='note'>Throughput. {note}</p><table><tr><th>run</th><th>images/s</th><th>s/round</th>"
            f"<th>rounds measured</th><th>s/round with start-up</th></tr>{''.join(rows)}</table>")


def _plots(runs: list[RunData]) -> str:
    svgs = [plots.quality_diversity(runs), plots.training_reward(runs)]
    svgs += [plots.metric_over_rounds(runs, k) for k in plots.evaluation_metrics(runs)]
    svgs += [s for s in (plots.update_metric(runs, k) for k in plots.UPDATE_LABELS) if s is not None]
    svgs += [s for s in (plots.update_metric(runs, k, "rollouts") for k in plots.ROLLOUT_LABELS) if s is not None]
    svgs = plots.svg_ids_unique(svgs)
    figs = "".join(f'<figure class="plot">{s}</figure>' for s in svgs)
    legend = ("Line styles: solid, all evaluation prompts; dashed, held-out prompts; dotted, training prompts."
              " Colours: one per run.")
    return f'<h2>Curves</h2><p class="note">{legend}</p><div class="plots">{figs}</div>'


def _grid_uri(store: ArtifactStore, ev: Evaluation) -> tuple[str, bool]:
    """The grid as a data URI (downscaled to MAX_GRID_WIDTH), and whether its cells are small enough to show
    pixelated (the toy world's 16x16 images) rather than smoothed."""
    data = store.get(ev.grid)
    image = Image.open(io.BytesIO(data))
    if image.width <= MAX_GRID_WIDTH:
        return "data:image/png;base64," + base64.b64encode(data).decode(), True
    small = image.convert("RGB").resize((MAX_GRID_WIDTH, round(image.height * MAX_GRID_WIDTH / image.width)),
                                        Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), False


def _grids(store: ArtifactStore, run: RunData, named: bool) -> str:
    figures = []
    for ev in run.evaluations:
        uri, pixelated = _grid_uri(store, ev)
        labels = "".join(f"<span>{_e(p['prompt'])}{' (held out)' if p['held_out'] else ''}</span>"
                         for p in ev.per_prompt)
        metric = quality_key(ev.metrics)
        label = evaluation_label(ev.round)
        caption = f"{label}: {metric} {ev.metrics.get(metric, float('nan')):.3f}"
        figures.append(f'<figure class="grid"><figcaption>{_e(caption)}</figcaption><div class="grid-body">'
                       f'<div class="labels">{labels}</div><img alt="evaluation grid {_e(label)}" '
                       f'src="{uri}"{" class=pixelated" if pixelated else ""}></div></figure>')
    heading = f"Evaluation images{': ' + _e(run.run_id) if named else ''}"
    note = "One row per evaluation prompt; the same noise seeds in every round, so a change is the policy's."
    return f'<h2>{heading}</h2><p class="note">{note}</p>{"".join(figures)}'


def _lineage(store: ArtifactStore, run: RunData) -> str:
    heading = f"<h2>Final adapter: {_e(run.run_id)}</h2>"
    if run.final_adapter is None:
        return heading + "<p>No update has run: the evaluations are of the base model.</p>"
    top = run.lineage[0][2]
    base = [r for _, _, r in run.lineage if r.kind == "base_model"]
    rounds = sorted({r.round for _, _, r in run.lineage if r.kind == "rollouts" and r.round is not None})
    # rounds shown from 1 (the records count from 0): the adapter of round k is the one evaluated "after round k"
    here = located_uri(store, ArtifactRef(kind=top.kind, uri=top.uri, sha256=top.sha256, size=0))  # a copied store
    rows = [("adapter", f"{top.sha256} ({here})"), ("produced by", f"{top.stage} of round {_shown(top.round)}"),
            ("config", top.config_sha256), ("code version", top.code_version), ("image", top.image or "-"),
            ("base model", ", ".join(f"{b.uri} ({b.sha256[:12]})" for b in base[:1]) or "-"),
            ("rounds in its lineage", f"{len(rounds)} ({rounds[0] + 1}..{rounds[-1] + 1})" if rounds else "-"),
            ("artifacts in its lineage", str(len({r.sha256 for _, _, r in run.lineage})))]
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    inputs = "".join(f"<tr><td>{_e(name)}</td><td>{_e(r.kind)}</td><td>{_e(r.sha256[:12])}</td>"
                     f"<td>{_e(r.stage)}</td><td class='num'>{_shown(r.round)}</td></tr>"
                     for depth, name, r in run.lineage if depth == 1)
    command = f"dgrpo lineage {top.sha256} --store {store.uri}"
    return (f"{heading}<table>{table}</table><p>Its direct inputs:</p><table><tr><th>input</th><th>kind</th>"
            f"<th>sha256</th><th>stage</th><th>round</th></tr>{inputs}</table>"
            f"<p class='note'>The whole chain: <code>{_e(command)}</code></p>")


def _shown(round_index: int | None) -> str:
    return "" if round_index is None else str(round_index + 1)


LIST_SHOWN = 24
"""Items of a long list (prompts read from a file) shown in the recipe; the rest are counted."""


def _shorten(value: object) -> object:
    if isinstance(value, dict):
        return {k: _shorten(v) for k, v in value.items()}
    if isinstance(value, list) and len(value) > LIST_SHOWN:
        return value[:LIST_SHOWN] + [f"... and {len(value) - LIST_SHOWN} more"]
    return value


def _value(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip() \
        if isinstance(value, (list, dict)) else str(value)


def _recipes(runs: list[RunData]) -> str:
    parts = ["<h2>Recipe</h2>"]
    known = [r for r in runs if r.recipe is not None]
    if len(known) > 1:
        flat = [flatten(_shorten(r.recipe)) for r in known]
        keys = sorted({k for f in flat for k in f if len({repr(g.get(k)) for g in flat}) > 1})
        head = "".join(f"<th>{_e(r.run_id)}</th>" for r in known)
        rows = "".join(f"<tr><td>{_e(k)}</td>" + "".join(f"<td>{_e(f.get(k, '-'))}</td>" for f in flat) + "</tr>"
                       for k in keys)
        parts.append(f"<p>Where the recipes differ:</p><table><tr><th>field</th>{head}</tr>{rows}</table>")
    for run in runs:
        if run.recipe is None:
            parts.append(f"<p>{_e(run.run_id)}: no config artifact in the lineage (no update has run).</p>")
            continue
        changed, _ = non_default_fields(_shorten(run.recipe))
        rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(_value(v))}</td></tr>" for k, v in changed.items())
        text = yaml.safe_dump(_shorten(run.recipe), sort_keys=False, width=110)
        parts.append(f"<p>{_e(run.run_id)}: config {_e((run.config_sha256 or '')[:12])}, the fields it sets "
                     f"away from the defaults:</p><table class='recipe'><tr><th>field</th><th>value</th></tr>{rows}"
                     f"</table><details><summary>{_e(run.run_id)}: the whole recipe, defaults included "
                     f"({len(flatten(run.recipe))} fields)</summary><pre>{_e(text)}</pre></details>")
    return "".join(parts)
