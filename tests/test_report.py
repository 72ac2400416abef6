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
from dgrpo_pipelines.cli import app
from support import small_config
from typer.testing import CliRunner

from dgrpo.runs.evaluations import read_evaluation
from dgrpo.runtime.report import build_report, evaluation_markdown, render_html
from dgrpo.runtime.report.data import Evaluation, RunData, TrainingRound, load_run
from dgrpo.runtime.report.headline import verdict
from dgrpo.runtime.report.plots import _min_span, pareto_front, update_metric
from dgrpo.runtime.report.summary import format_report
from dgrpo.store import ArtifactRef, LocalStore, StoreError

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

    # the headline: method, state, rounds, engine and the verdict, before the tables
    headline = next(i for i, (t, a) in enumerate(page.tags) if a.get("class") == "headline")
    assert headline < next(i for i, (t, _) in enumerate(page.tags) if t == "table")
    assert "cluster passthrough, regularizer none" in titles and "done, 1/1 rounds in " in titles
    assert "in-process engine, staged execution" in titles and "Verdict:" in titles and run.headline.verdict in titles
    # the base model is called base, in the summary table and the grid captions
    assert page.text.count("base") >= 2 and "after round 0" not in titles
    assert [a["alt"] for a in grids] == ["evaluation grid base", "evaluation grid after round 1"]
    # no flat-zero KL or SA-Reg panel for a recipe without a regulariser
    assert "KL to the base model" not in titles and "SA-Reg" not in titles
    # the recipe: its non-default fields in a table (eval.every 1 is set, seed 0 is the default), the rest folded
    recipe_table = page.text[page.text.index("field", page.text.index("Recipe")):]
    shown = recipe_table[:recipe_table.index(next(t for t in recipe_table if "the whole recipe" in t))]
    assert "eval.every" in shown and "train.learning_rate" in shown and "seed" not in shown
    assert "the whole recipe, defaults included" in titles and "lora.rank" not in shown


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
    end = next(i for i, t in enumerate(differ) if t.startswith("alpha: config "
                                                                + load_run(store, "alpha").config_sha256[:12]))
    assert [t for t in differ[1:end] if t.strip()] == ["field", "alpha", "beta", "train.learning_rate", "0.003",
                                                       "0.01"]


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
    record = read_evaluation(LocalStore(runs / "store"), "alpha", 1)
    text = evaluation_markdown(record)
    assert "| measure | all prompts | held-out | training |" in text
    assert f"| vendi | {record.metrics['vendi']:.4f} | {record.metrics['heldout_vendi']:.4f} | " in text
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


def test_the_markdown_report_has_the_headline_base_and_the_rewards_it_used(runs):
    store = LocalStore(runs / "store")
    report = build_report(store, "alpha")
    text = format_report(report)
    assert text.splitlines()[2].startswith("**toy-flowgrpo: cluster passthrough") and "Verdict: " in text
    assert "| base | " in text and "| after round 1 | " in text and "| 0 | " not in text
    assert "Evaluation reward: `toy`: the training reward (reward.name)" in text
    assert "Training reward `toy` (reward.name), mean over the round's rollouts: round 1: " in text
    assert "another reward" not in text
    # an evaluation scored by another reward than training says so
    other = report | {"rewards": {"training": "toy", "evaluation": {"name": "pickscore", "why": "eval.reward"}}}
    assert "The evaluation table used another reward (`pickscore`) than training (`toy`)" in format_report(other)


def test_the_verdict_follows_its_stated_rule():
    base = {"reward": 0.50, "mode_entropy": 0.96, "vendi": 4.5}
    assert verdict(base, {"reward": 0.71, "mode_entropy": 0.80, "vendi": 4.4}) == \
        "reward +0.21 while mode entropy fell 0.96 -> 0.8: diversity collapsing"
    assert verdict(base, {"reward": 0.60, "mode_entropy": 0.95, "vendi": 3.0}).endswith(": held")  # entropy first
    assert verdict(base, {"reward": 0.505, "mode_entropy": 0.96}).endswith("no clear change yet")
    assert verdict(base, {"reward": 0.50, "mode_entropy": 0.5}).endswith("diversity lost without a quality gain")
    assert verdict({"quality": 0.4, "vendi": 4.0}, {"quality": 0.3, "vendi": 4.0}).endswith("quality fell")
    assert verdict(base, base) == "only the base model evaluated: nothing to compare yet"


def test_plot_ranges_do_not_magnify_noise():
    limits = []
    _min_span([0.3000, 0.3004], lambda lo, hi: limits.append((lo, hi)))  # a 0.0004 wiggle on a 0-1 measure
    assert limits[-1][1] - limits[-1][0] == pytest.approx(0.05) and sum(limits[-1]) / 2 == pytest.approx(0.3002)
    _min_span([4.40, 4.50], lambda lo, hi: limits.append((lo, hi)))  # a Vendi score: 10% of the value
    assert limits[-1][1] - limits[-1][0] == pytest.approx(0.45)
    _min_span([0.1, 0.9], lambda lo, hi: limits.append((lo, hi)))  # a real change keeps matplotlib's fit
    assert len(limits) == 2


def _run_with_updates(regularizer: str) -> RunData:
    config = small_config(**{"train.regularizer": regularizer, "train.beta_kl": 0.01 if regularizer == "kl" else 0})
    ev = Evaluation(0, {"reward": 0.5}, [], ArtifactRef(kind="grid", uri="x", sha256="0" * 64, size=0))
    training = [TrainingRound(r, 0.5, 0.1, {"kl": 0.0, "sa_reg": 0.0, "ratio_std": 1e-3}) for r in range(3)]
    return RunData("r", [ev], training, None, [], config.recipe_dict(), None, config=config)


def test_kl_and_sa_reg_panels_only_for_a_recipe_that_uses_them():
    plain, with_kl = _run_with_updates("none"), _run_with_updates("kl")
    assert update_metric([plain], "kl") is None and update_metric([plain], "sa_reg") is None
    assert update_metric([plain], "ratio_std") is not None
    assert "KL to the base model" in update_metric([with_kl], "kl") and update_metric([with_kl], "sa_reg") is None


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
