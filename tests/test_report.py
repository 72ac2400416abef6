"""The HTML run report: parsed here, and rendered by a real browser (Debian's headless Chromium) as a user opens it
from `dgrpo run`'s output, checking that every image and plot renders with no console error."""

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import small_config
from dgrpo_pipelines.cli import app
from typer.testing import CliRunner

from dgrpo.runtime.report import evaluation_markdown, render_html
from dgrpo.runtime.report.data import load_run
from dgrpo.runtime.report.plots import pareto_front
from dgrpo.store import LocalStore, StoreError

# One round, two evaluations (base and after round 1), on a few images: a run in seconds that writes every record
# the report reads.
FAST = {"rounds": 1, "eval.every": 1, "sampling.num_steps": 4, "sampling.group_size": 4, "train.batch_size": 8,
        "train.micro_batch_size": 8, "eval.num_steps": 2, "eval.samples_per_prompt": 4, "eval.grid_columns": 4,
        "eval.prompts": ["a red square", "a green cross", "a yellow cross"]}


def _config_file(path: Path, **overrides) -> Path:
    path.write_text(yaml.safe_dump(small_config(**(FAST | overrides)).to_dict()))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs in one store through `dgrpo run` (in-process engine): what `make run` leaves behind."""
    root = tmp_path_factory.mktemp("report")
    out = root / "outputs"
    for run_id, lr in (("alpha", 3e-3), ("beta", 1e-2)):
        cfg = _config_file(root / f"{run_id}.yaml", **{"train.learning_rate": lr})
        result = CliRunner().invoke(app, ["run", "--config", str(cfg), "--engine", "inprocess", "--output", str(out),
                                          "--run-id", run_id])
        assert result.exit_code == 0, result.output
        assert f"html:      {(out / 'runs' / run_id / 'report.html').resolve()}" in result.output
    return out


class Page(HTMLParser):
    """The tags, attributes and text of an HTML document, and whether its tags nest properly."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.text: list[str] = []
        self.svg_depth = 0
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if self.svg_depth == 0 and tag not in self.VOID:
            self.stack.append(tag)
        if tag == "svg" or self.svg_depth:
            self.svg_depth += 1

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if self.svg_depth:
            self.svg_depth -= 1
            if tag != "svg" or self.svg_depth:
                return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]


def test_the_html_report_holds_grids_curves_pareto_lineage_and_recipe(runs):
    store = LocalStore(runs / "store")
    text = (runs / "runs" / "alpha" / "report.html").read_text()
    assert text == (runs / "store" / "runs" / "alpha" / "report.html").read_text()  # also kept in the store
    page = Page(text)
    assert page.stack == [], "every element is closed"
    run = load_run(store, "alpha")
    assert [ev.round for ev in run.evaluations] == [0, 1]

    # one grid per evaluation, inline, byte for byte the stored grid (same seeds every round: eval.seed)
    grids = [a for a in page.all("img") if a.get("alt", "").startswith("evaluation grid")]
    assert len(grids) == len(run.evaluations)
    for img, ev in zip(grids, run.evaluations, strict=True):
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1]) == store.get(ev.grid)
    # self-contained: nothing fetched, nothing run
    assert not page.all("script") and not page.all("link") and not page.all("iframe")
    assert all(not a.get(k, "").startswith(("http:", "https:", "//")) for _, a in page.tags for k in ("src", "href"))

    # plots: Pareto, training reward, every evaluation measure, the update's diagnostics
    titles = " ".join(page.text)
    for title in ("quality against diversity (Pareto)", "training reward per round", "Vendi score of the embeddings",
                  "embedding diversity (mean pairwise distance)", "mode entropy", "importance-ratio std",
                  "share of zero-spread groups"):
        assert title in titles, title
    assert len(page.all("svg")) >= 10
    ids = [a["id"] for _, a in page.tags if "id" in a]
    assert len(ids) == len(set(ids)), "element ids are unique across the inlined plots"

    # each grid row is labelled with its prompt, held-out prompts marked
    assert page.text.count("a yellow cross (held out)") == 2 and page.text.count("a red square") >= 2

    # lineage and recipe
    assert run.final_adapter is not None and run.final_adapter.sha256 in titles
    assert f"dgrpo lineage {run.final_adapter.sha256} --store {store.uri}" in titles
    recipe = yaml.safe_load(next(t for t in page.text if t.lstrip().startswith("seed:")))
    assert recipe == run.recipe == small_config(**FAST, **{"train.learning_rate": 3e-3}).recipe_dict()


def test_several_runs_overlay_and_their_recipes_are_compared(runs):
    store = LocalStore(runs / "store")
    page = Page(render_html(store, ["alpha", "beta"]))
    text = " ".join(page.text)
    assert "dgrpo runs alpha, beta" in text
    grids = [a for a in page.all("img") if a.get("alt", "").startswith("evaluation grid")]
    assert len(grids) == 4
    # the legend of the curves names both runs; the recipe table shows the one differing field
    assert text.count("alpha (held-out)") >= 5 and text.count("beta (held-out)") >= 5
    differ = page.text[page.text.index("Where the recipes differ:"):]
    assert [t for t in differ[1:differ.index("alpha: config " + load_run(store, "alpha").config_sha256[:12])]
            if t.strip()] == ["field", "alpha", "beta", "train.learning_rate", "0.003", "0.01"]


def test_cli_writes_the_overlay_report_and_names_a_missing_run(runs, tmp_path):
    target = tmp_path / "both.html"
    result = CliRunner().invoke(app, ["report", "alpha", "beta", "--store", str(runs / "store"), "--html",
                                      "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert Page(target.read_text()).all("img")
    missing = CliRunner().invoke(app, ["report", "gamma", "--store", str(runs / "store"), "--html",
                                       "-o", str(tmp_path / "g.html")])
    assert missing.exit_code == 1 and "run gamma: no records" in missing.output
    assert not (tmp_path / "g.html").exists()
    with pytest.raises(StoreError, match="run gamma"):
        render_html(LocalStore(runs / "store"), ["alpha", "gamma"])


def test_evaluation_markdown_lists_the_splits_and_the_reward(runs):
    record = LocalStore(runs / "store").get_json("runs/alpha/eval/r0001.json")
    text = evaluation_markdown(record)
    assert "| measure | all prompts | held-out | training |" in text
    assert f"| vendi | {record['metrics']['vendi']:.4f} | {record['metrics']['heldout_vendi']:.4f} | " in text
    assert "| a yellow cross | yes |" in text and "| a red square | no |" in text and "Reward: `toy`" in text


def test_text_from_the_store_is_escaped(runs):
    store = LocalStore(runs / "store")
    key = "runs/alpha/eval/r0001.json"
    record = store.get_json(key)
    changed = json.loads(json.dumps(record))
    changed["per_prompt"][2]["prompt"] = "a green <b>cross</b> & <script>alert(1)</script>"
    store.put_json(key, changed)
    try:
        page = Page(render_html(store, ["alpha"]))
    finally:
        store.put_json(key, record)
    assert "a green <b>cross</b> & <script>alert(1)</script> (held out)" in page.text
    assert not page.all("b") and not page.all("script")


def test_pareto_front_keeps_exactly_the_undominated_points():
    points = np.array([[0.1, 0.9], [0.5, 0.5], [0.4, 0.4], [0.9, 0.1], [0.5, 0.2], [0.2, 0.9]])
    # brute force: a point is on the front when no other is >= on both axes and > on one
    expected = {tuple(p) for p in points
                if not any((q >= p).all() and (q > p).any() for q in points)}
    assert {tuple(p) for p in pareto_front(points)} == expected == {(0.2, 0.9), (0.5, 0.5), (0.9, 0.1)}


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_report_renders_in_headless_chromium(runs):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (extra 'dev') is not installed")
    path = (runs / "runs" / "alpha" / "report.html").resolve()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            messages, failed, requests = [], [], []
            page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri(), wait_until="load")
            images = page.evaluate("""() => Array.from(document.images).map(i => ({
                alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
                shown: i.getBoundingClientRect().width}))""")
            svgs = page.evaluate("""() => Array.from(document.querySelectorAll('figure.plot > svg')).map(s => {
                const b = s.getBBox(); return {w: b.width, h: b.height,
                paths: s.querySelectorAll('path').length}})""")
        finally:
            browser.close()
    assert messages == [] and failed == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert len(images) == 2 and all(i["complete"] and i["w"] > 0 and i["h"] > 0 and i["shown"] > 0 for i in images)
    assert len(svgs) >= 10 and all(s["w"] > 100 and s["h"] > 100 and s["paths"] > 5 for s in svgs), svgs


def test_the_kfp_glue_publishes_the_report_as_an_html_output(runs, tmp_path):
    from types import SimpleNamespace

    from dgrpo.runtime import component_io as cio

    store = LocalStore(runs / "store")
    artifact = SimpleNamespace(path=str(tmp_path / "kfp" / "report"), metadata={})
    cio.write_run_report(store, "alpha", "fine-tune alpha: done <10/10 rounds>", artifact)
    page = Page(Path(artifact.path).read_text())
    assert "fine-tune alpha: done &lt;10/10 rounds&gt;" in Path(artifact.path).read_text()  # escaped, first
    assert store._read("runs/alpha/report.html").decode() == Path(artifact.path).read_text()
    assert len([a for a in page.all("img") if a.get("alt", "").startswith("evaluation grid")]) == 2
