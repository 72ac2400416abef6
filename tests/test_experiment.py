"""The toy experiment lab's bookkeeping: arms share one budget, seeds are summarised by mean and spread per seed group
(tuning seeds apart from evaluation seeds), diversity is compared at matched quality, and the goals of
docs/experiment.md#goals are decided by the numbers on the evaluation seeds (a failing case must FAIL)."""

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from dgrpo_lab.analysis import at_matched, mean_std, pareto_front, path_means, summarise, summarise_groups
from dgrpo_lab.arms import (
    OPTIONAL_PRESETS,
    PRESETS,
    build_arms,
    config_differences,
    difference_lines,
    favoured_mode,
    run_id_of,
    with_seed,
)
from dgrpo_lab.columns import MEASURES, SIGNAL
from dgrpo_lab.goals import GOAL_NAMES, GOALS, GOALS_DOC, check_goals
from dgrpo_lab.measures import quadrant_quality, variance_shares, with_signal
from dgrpo_lab.plot import plot
from dgrpo_lab.report import markdown
from dgrpo_lab.run import run_experiment
from dgrpo_lab.seeds import EVALUATION_SEEDS, TUNING_SEEDS, describe, seed_group, seeds_for

from dgrpo.toyworld.presets import PRESETS_DIR

CONFIGS = PRESETS_DIR


def test_arms_differ_only_in_their_method_sections():
    arms = build_arms(CONFIGS, betas=[0.5, 2.0], presets=PRESETS | OPTIONAL_PRESETS)
    names = [a.name for a in arms]
    assert names == [*PRESETS, *OPTIONAL_PRESETS, "bonus-beta0.5", "bonus-beta2"]
    by = {a.name: a.config for a in arms}
    base = by["flowgrpo"].to_dict()
    for arm in arms[1:]:
        other = arm.config.to_dict()
        # GARDO's reward adds its auxiliary reward beside the same main reward
        assert {k for k in base if base[k] != other[k]} <= {"name", "cluster", "train", "drift", "progrpo", "gardo",
                                                            "reward"}
        assert {k for k in base["train"] if base["train"][k] != other["train"][k]} <= {
            "regularizer", "sa_lambda", "structure_steps", "beta_kl", "detail_baseline"}
    assert by["flowgrpo"].cluster.method == "passthrough" and by["flowgrpo"].train.regularizer == "none"
    assert by["sareg"].train.regularizer == "sa" and by["sareg"].cluster.method == "passthrough"
    assert by["bonus"].cluster.method == "diverse" and by["bonus"].train.regularizer == "none"
    # DiverseGRPO = the bonus arm + the SA-Reg arm (+ the cluster baseline); the paper's arm has none of this
    # project's additions (test_the_paper_arm_differs_from_the_shipped_one_in_the_named_additions)
    assert by["diversegrpo"].cluster == by["bonus"].cluster
    assert by["diversegrpo-paper"].train == by["sareg"].train
    assert by["diversegrpo"].train == dataclasses.replace(by["sareg"].train, detail_baseline="cluster")
    assert by["bonus-beta2"].cluster.beta == 2.0 and by["bonus-beta2"].train.regularizer == "none"
    # GARDO's main reward is the very reward the others train on
    assert by["gardo"].reward.options["main"].get("options", {}) == by["flowgrpo"].reward.options


def test_the_paper_arm_differs_from_the_shipped_one_in_the_named_additions():
    arms = build_arms(CONFIGS, presets={k: (PRESETS | OPTIONAL_PRESETS)[k] for k in
                                        ("flowgrpo", "diversegrpo", "diversegrpo-paper")})
    by = {a.name: a.config for a in arms}
    diff = config_differences(by["diversegrpo-paper"], by["diversegrpo"])
    assert set(diff) == {"cluster.beta", "cluster.normalization", "cluster.quality_normalization",
                         "cluster.quality_gate", "cluster.k_selection", "cluster.width_heuristic",
                         "train.detail_baseline"}
    assert diff["cluster.k_selection"] == ("eigengap", "fixed") and diff["cluster.quality_gate"] == (True, False)
    assert config_differences(by["flowgrpo"], by["flowgrpo"]) == {}
    lines = difference_lines(arms)
    paper = next(x for x in lines if x.startswith("| diversegrpo-paper |"))
    assert paper.startswith("| diversegrpo-paper | diversegrpo | ") and "`cluster.k_selection`: 'eigengap' -> " \
        "'fixed'" in paper
    shipped = next(x for x in lines if x.startswith("| diversegrpo |"))
    assert "| flowgrpo |" in shipped and "`cluster.method`: 'passthrough' -> 'diverse'" in shipped
    assert not any(x.startswith("| flowgrpo |") for x in lines)


def test_budget_mismatch_is_refused(tmp_path):
    for name, preset in PRESETS.items():
        text = (CONFIGS / preset).read_text()
        if name == "sareg":
            text += "rounds: 31\n"
        (tmp_path / preset).write_text(text)
    with pytest.raises(ValueError, match="budget"):
        build_arms(tmp_path)


def test_run_ids_name_arm_seed_and_recipe():
    config = build_arms(CONFIGS)[0].config
    assert with_seed(config, 7).seed == 7 and with_seed(config, 7).rounds == config.rounds
    assert run_id_of("flowgrpo", with_seed(config, 2)).startswith("experiment-flowgrpo-s2-")
    assert run_id_of("flowgrpo", config) != run_id_of("flowgrpo", build_arms(CONFIGS, overrides={"rounds": 3})[0]
                                                       .config)


def _row(arm, seed, rnd, quality, entropy, modes=4.0):
    row = {c: 0.5 for c in MEASURES}
    return row | {"arm": arm, "seed": seed, "round": rnd, "heldout_quality": quality, "train_quality": quality,
                  "heldout_mode_entropy": entropy, "train_mode_entropy": entropy, "heldout_modes_over_10pct": modes}


def test_matched_quality_interpolates_along_the_path_and_is_nan_when_never_reached():
    rows = [_row("a", 0, 0, 0.5, 1.0), _row("a", 0, 5, 0.7, 0.6), _row("a", 0, 10, 0.9, 0.2)]
    assert at_matched(rows, 0.6, "heldout_mode_entropy") == pytest.approx(0.8)
    assert at_matched(rows, 0.85, "heldout_mode_entropy") == pytest.approx(0.3)
    assert at_matched(rows, 0.5, "heldout_mode_entropy") == 1.0
    assert math.isnan(at_matched(rows, 0.95, "heldout_mode_entropy"))


def test_mean_std_is_the_sample_std_over_finite_values():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    mean, std = mean_std([1.0, math.nan, 3.0])
    assert mean == 2.0 and std == pytest.approx(math.sqrt(2))
    assert mean_std([4.0]) == (4.0, 0.0)
    assert math.isnan(mean_std([math.nan])[0])


def _experiment(flow_final_q, flow_final_h, div_final_q, div_h=(0.95, 0.93, 0.9), noise=(-0.01, 0.0, 0.01),
                seeds=EVALUATION_SEEDS):
    """Flow-GRPO and DiverseGRPO over 3 seeds (evaluation seeds unless said), base quality 0.5, evaluations at
    rounds 0, 10, 20."""
    rows = []
    for seed, n in zip(seeds, noise, strict=False):
        rows += [_row("flowgrpo", seed, 0, 0.5, 0.95), _row("flowgrpo", seed, 10, 0.6, 0.6, 2.0),
                 _row("flowgrpo", seed, 20, flow_final_q + n, flow_final_h, 1.0)]
        rows += [_row("diversegrpo", seed, r, q + n, h)
                 for r, q, h in zip((0, 10, 20), (0.5, 0.6, div_final_q), div_h, strict=True)]
    return rows


def test_summary_gains_matched_quality_and_goals_met():
    rows = _experiment(flow_final_q=0.7, flow_final_h=0.2, div_final_q=0.7)
    summary, target = summarise(rows, ["flowgrpo", "diversegrpo"])
    assert target == pytest.approx(0.7)
    flow, div = summary
    assert flow["heldout_quality_gain"] == (pytest.approx(0.2), pytest.approx(0.01))
    assert div["matched_reached"] == 2  # the seed 0.01 short of the target never gets there
    # seeds 1, 2 interpolated (0.9 at 0.7, 0.903 at 0.7 of 0.6 -> 0.71); seed 0 at its final evaluation (0.9)
    assert div["matched_heldout_mode_entropy"][0] == pytest.approx((0.9 + 0.903 + 0.9) / 3)
    goals = check_goals(summary)
    assert [g["name"] for g in goals] == list(GOAL_NAMES[:6]) and all(g["met"] for g in goals), goals


def test_goals_fail_when_the_baseline_does_not_collapse_or_the_method_lags():
    rows = _experiment(flow_final_q=0.7, flow_final_h=0.5, div_final_q=0.6, div_h=(0.95, 0.93, 0.8))
    met = {g["name"]: g["met"] for g in check_goals(summarise(rows, ["flowgrpo", "diversegrpo"])[0])}
    assert met == {"baseline-learns": True, "baseline-collapses": False, "quality-matched": False,
                   "diversity-kept": False, "diversity-ratio": False, "modes-kept": True}, met
    # a gain within the seed noise is not learning: 0.01 +- 0.02 is 0.9 standard errors
    rows = _experiment(flow_final_q=0.51, flow_final_h=0.2, div_final_q=0.51, noise=(-0.02, 0.0, 0.02))
    assert not check_goals(summarise(rows, ["flowgrpo", "diversegrpo"])[0])[0]["met"]
    assert check_goals(summarise(rows, ["flowgrpo"])[0]) == []  # no method arm: nothing to decide


def test_ablation_goal_needs_each_part_to_help_and_both_to_do_best():
    base = _experiment(flow_final_q=0.7, flow_final_h=0.2, div_final_q=0.7)
    parts = [r | {"arm": arm} for r in base if r["arm"] == "diversegrpo" for arm in ("sareg", "bonus")]
    arms = ["flowgrpo", "sareg", "bonus", "diversegrpo"]
    assert check_goals(summarise(base + parts, arms)[0])[-1]["met"]  # ties count as "together do best"
    worse = [r | {"heldout_mode_entropy": 0.1} if r["arm"] == "bonus" else r for r in parts]
    goal = check_goals(summarise(base + worse, arms)[0])[-1]
    assert goal["name"] == "ablation" and not goal["met"]


def test_path_means_pareto_front_table_and_plot(tmp_path):
    rows = _experiment(flow_final_q=0.7, flow_final_h=0.2, div_final_q=0.7)
    arms = ["flowgrpo", "diversegrpo"]
    last = [m for m in path_means(rows, arms) if m["arm"] == "flowgrpo"][-1]
    assert last["round"] == 20 and last["seeds"] == 3
    assert last["heldout_quality"] == (pytest.approx(0.7), pytest.approx(0.01))
    assert pareto_front([(0.5, 0.9), (0.7, 0.2), (0.7, 0.9), (0.6, 0.95), (0.6, 0.5)]) == [(0.6, 0.95), (0.7, 0.9)]
    costs = {("flowgrpo", s): {"rollout_nfe_per_round": 960.0, "wall_s": 100.0 + i}
             for i, s in enumerate(EVALUATION_SEEDS[:3])}
    costs |= {("diversegrpo", s): {"rollout_nfe_per_round": 720.0, "wall_s": math.nan if i else 90.0}
              for i, s in enumerate(EVALUATION_SEEDS[:3])}
    summary, target = summarise(rows, arms, costs=costs)
    assert summary[0]["wall_s"] == (101.0, 1.0) and summary[1]["wall_s"] == (90.0, 0.0)  # nan: not recorded
    groups = summarise_groups(rows, arms, costs=costs)
    text = markdown(groups, {g: check_goals(s) for g, (s, _) in groups.items()}, rows, arms, "# header")
    assert "| PASS |" in text and "0.200 ± 0.010" in text and f"## Goals ({GOALS_DOC})" in text
    assert "| diversegrpo | evaluation | 0.200 ± 0.000 | 0.900 ± 0.000 | 720.000 ± 0.000 | 90.000 ± 0.000 |" in text
    plot(rows, arms, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


TINY = {"rounds": 1, "sampling.prompts_per_round": 2, "sampling.group_size": 8, "train.batch_size": 16,
        "train.micro_batch_size": 8, "eval.samples_per_prompt": 4, "eval.num_steps": 4, "eval.every": 1,
        "eval.prompts": ["a red square", "a yellow cross"]}
"""support.small_config's budget, one round: seconds per run."""


def test_variance_shares_split_the_in_group_spread_between_mode_and_quality():
    rng = np.random.default_rng(0)
    groups = np.repeat(["a", "b"], 8)
    mode = np.tile([0, 0, 1, 1, 2, 2, 3, 3], 2)
    quality = rng.uniform(0.3, 0.6, 16)
    # the reward is the quality alone: none of its spread is the mode's beyond chance, all of it the quality's
    between, q_share = variance_shares(quality + 5.0 * (groups == "b"), mode, quality, groups)
    assert q_share == pytest.approx(1.0, abs=1e-12)
    eta = sum(((quality[groups == g][mode[groups == g] == k] - quality[groups == g].mean()).mean() ** 2) * 2
              for g in "ab" for k in range(4)) / sum(((quality[groups == g] - quality[groups == g].mean()) ** 2).sum()
                                                     for g in "ab")
    assert between == pytest.approx(eta, rel=1e-12)
    # the reward is the mode alone: all of its spread is between modes; the quality explains only its chance part
    between, q_share = variance_shares(3.0 * (mode == 0), mode, quality, groups)
    assert between == pytest.approx(1.0, abs=1e-12) and q_share < 0.5
    # centred within (group, mode) strata, as the detail steps' cluster baseline centres it: only the quality is left
    reward = quality * (1 + 2.0 * (mode == 0))
    assert variance_shares(reward, mode, quality, groups)[1] < 0.5
    strata = np.array([f"{g}/{m}" for g, m in zip(groups, mode, strict=True)])
    assert variance_shares(quality + 3.0 * (mode == 0), mode, quality, strata) == pytest.approx((0.0, 1.0), abs=1e-12)
    # no spread in a group: nothing to share
    assert all(math.isnan(v) for v in variance_shares(np.ones(16), mode, quality, groups))


def test_quadrant_quality_splits_the_favoured_quadrant_from_the_others():
    mode = np.array([0, 0, 1, 2, 3, 4])  # 4: too little foreground, no quadrant
    quality = np.array([0.5, 0.7, 0.1, 0.2, 0.3, 0.0])
    assert quadrant_quality(mode, quality, 0) == pytest.approx((0.6, 0.2), abs=1e-15)
    assert quadrant_quality(mode, quality, 2) == pytest.approx((0.2, 0.4), abs=1e-15)
    favoured, others = quadrant_quality(np.array([0, 0, 4]), np.array([0.4, 0.6, 0.0]), 0)  # collapsed
    assert favoured == pytest.approx(0.5, abs=1e-15) and math.isnan(others)


def test_the_favoured_quadrant_is_the_one_the_runs_reward_prefers():
    arm = build_arms(CONFIGS, presets={"flowgrpo": PRESETS["flowgrpo"]})[0]
    assert favoured_mode(arm.config) == 0  # the shipped MODE_PREFERENCE: top-left
    moved = build_arms(CONFIGS, overrides={"reward.options.mode_preference": [0, 0, 1.5, 0.5]},
                       presets={"flowgrpo": PRESETS["flowgrpo"]})[0]
    assert favoured_mode(moved.config) == 2
    flat = build_arms(CONFIGS, overrides={"reward.options.mode_preference": [0, 0, 0, 0]},
                      presets={"flowgrpo": PRESETS["flowgrpo"]})[0]
    with pytest.raises(ValueError, match=r"reward\.options\.mode_preference"):
        favoured_mode(flat.config)


def test_signal_is_averaged_over_the_rounds_before_each_evaluation():
    nan = math.nan
    rows = with_signal([{"round": 0}, {"round": 2}, {"round": 4}], {
        0: (0.8, 0.2, 0.5, 0.4, 0.3), 1: (0.6, 0.4, 0.7, 0.6, 0.5), 2: (0.2, 0.8, 0.9, 0.5, nan),
        3: (0.0, 1.0, 1.0, 0.7, nan)})
    assert math.isnan(rows[0]["rollout_mode_share"])  # the base model: nothing trained yet
    assert [tuple(r[k] for k in SIGNAL) for r in rows[1:]] == [pytest.approx((0.7, 0.3, 0.6, 0.5, 0.4)),
                                                                 (pytest.approx(0.1), pytest.approx(0.9),
                                                                  pytest.approx(0.95), pytest.approx(0.6),
                                                                  pytest.approx(nan, nan_ok=True))]


@pytest.mark.e2e
def test_tiny_experiment_end_to_end(tmp_path):
    """Two arms x two seeds (a tuning and an evaluation seed), one round each: the tables, the plot and the reports
    come out of real runs, the seeds labelled and summarised by group."""
    presets = {"flowgrpo": PRESETS["flowgrpo"], "diversegrpo": PRESETS["diversegrpo"]}
    log: list[str] = []
    paths = run_experiment(tmp_path, overrides=TINY, log=log.append, jobs=1, seeds=[0, 3], presets=presets)
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [(r["arm"], r["seed"], r["seed_group"], r["round"]) for r in rows] == [
        (a, s, g, r) for s, g in (("0", "tuning"), ("3", "evaluation")) for a in presets for r in ("0", "1")]
    assert rows[0]["heldout_quality"] == rows[2]["heldout_quality"]  # round 0: one checkpoint, one eval seed
    for row in rows:  # what round 0's update learned from, read back from its reward and cluster artifacts
        signal = [float(row[k]) for k in SIGNAL]
        assert all(math.isnan(v) for v in signal) if row["round"] == "0" else all(0 <= v <= 1 for v in signal)
    assert f"## Goals ({GOALS_DOC})" in paths["markdown"].read_text()
    assert any(line.startswith(f"goals ({GOALS_DOC}) on the evaluation seeds") for line in log), log
    assert paths["html-seed3"].stat().st_size > 0 and paths["plot"].stat().st_size > 0
    with open(paths["summary"]) as f:
        summary = {(r["arm"], r["seed_group"]): r for r in csv.DictReader(f)}
    assert set(summary) == {(a, g) for a in presets for g in ("tuning", "evaluation")}
    assert {r["seeds"] for r in summary.values()} == {"1"}  # one seed per group: the groups are not pooled
    steps = build_arms(CONFIGS, overrides=TINY, presets=presets)[0].config.sampling.num_steps
    for row in summary.values():  # no pruning: every one of the 2 x 8 trajectories takes every step
        assert float(row["rollout_nfe_per_round_mean"]) == 2 * 8 * steps
        assert float(row["wall_s_mean"]) > 0
    assert "## Cost" in paths["markdown"].read_text()


def test_seeds_are_tuning_or_evaluation_seeds():
    assert TUNING_SEEDS == (0, 1, 2) and EVALUATION_SEEDS == (3, 4, 5, 6, 7)
    assert [seed_group(s) for s in (0, 2, 3, 7, 11)] == ["tuning", "tuning", "evaluation", "evaluation", "evaluation"]
    assert seeds_for("evaluation") == EVALUATION_SEEDS and seeds_for("all") == TUNING_SEEDS + EVALUATION_SEEDS
    with pytest.raises(ValueError, match="tuning, evaluation, all"):
        seeds_for("fresh")
    assert describe([3, 0, 4]) == "tuning 0; evaluation 3 4"


def test_the_seed_groups_are_summarised_apart_and_only_evaluation_seeds_decide():
    """Flow-GRPO collapses on the tuning seeds but not on the evaluation seeds: pooled, the mean would hide it;
    apart, the evaluation seeds' verdict is FAIL and the tuning seeds' pass decides nothing."""
    tuning = _experiment(flow_final_q=0.7, flow_final_h=0.2, div_final_q=0.7, seeds=TUNING_SEEDS)
    evaluation = _experiment(flow_final_q=0.6, flow_final_h=0.6, div_final_q=0.6, seeds=EVALUATION_SEEDS)
    arms = ["flowgrpo", "diversegrpo"]
    groups = summarise_groups(tuning + evaluation, arms)
    assert list(groups) == ["evaluation", "tuning"]
    (ev, ev_target), (tu, tu_target) = groups["evaluation"], groups["tuning"]
    assert ev_target == pytest.approx(0.6) and tu_target == pytest.approx(0.7)
    assert [(s["arm"], s["seed_group"], s["seeds"]) for s in ev] == [("flowgrpo", "evaluation", 3),
                                                                     ("diversegrpo", "evaluation", 3)]
    assert ev[0]["heldout_mode_entropy"][0] == pytest.approx(0.6)
    assert tu[0]["heldout_mode_entropy"][0] == pytest.approx(0.2)
    goals = {g: check_goals(s) for g, (s, _) in groups.items()}
    text = markdown(groups, goals, tuning + evaluation, arms, "# header")
    assert "| `baseline-collapses` | Flow-GRPO collapses: final held-out mode entropy <= 0.3 | FAIL |" in text
    assert "| `baseline-collapses` | Flow-GRPO collapses: final held-out mode entropy <= 0.3 | pass (tuning) |" in text
    only_tuning = summarise_groups(tuning, arms)
    text = markdown(only_tuning, {"tuning": check_goals(only_tuning["tuning"][0])}, tuning, arms, "# header")
    assert "no goal is decided" in text and "| PASS |" not in text and "| pass (tuning) |" in text


def test_the_goals_are_the_ones_docs_experiment_md_names_with_their_thresholds():
    """Every goal the code decides is a row of docs/experiment.md#goals under the same name, with its threshold."""
    doc = (Path(__file__).parents[1] / "docs" / "experiment.md").read_text()
    assert GOALS_DOC == "docs/experiment.md#goals" and "\n## Goals\n" in doc
    section = doc.split("\n## Goals\n", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("`")[1]: line for line in section.splitlines() if line.startswith("| `")}
    assert list(rows) == list(GOAL_NAMES)
    for name, threshold in GOALS.items():
        assert f"| {threshold:g} |" in rows[name], (name, rows[name])


def test_cli_dry_run_lists_the_shipped_presets_and_the_seed_groups():
    from dgrpo_pipelines.cli import app
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, ["experiment", "--dry-run", "--seeds", "all"])
    assert out.exit_code == 0, out.output
    assert "4 arms x 8 seeds (tuning 0 1 2; evaluation 3 4 5 6 7)" in out.output
    assert f"flowgrpo           {PRESETS_DIR / 'toy-flowgrpo.yaml'}" in out.output
    default = CliRunner().invoke(app, ["experiment", "--dry-run", "--all-arms", "--beta", "2"])
    assert "9 arms x 3 seeds (tuning 0 1 2)" in default.output and "bonus-beta2" in default.output
    both = CliRunner().invoke(app, ["experiment", "--dry-run", "--seed", "4", "--seeds", "all"])
    assert both.exit_code != 0 and "not both" in _words(both.output)
    bad = CliRunner().invoke(app, ["experiment", "--dry-run", "--seeds", "fresh"])
    assert bad.exit_code != 0 and "choose one of tuning, evaluation, all" in _words(bad.output)


def _words(output: str) -> str:
    """A usage error's text without the box it is drawn in."""
    return " ".join(output.replace("│", " ").split())


def test_target_comparison_end_to_end(tmp_path):
    """The diversity-target comparison's arms (the baseline, a fixed-beta DiverseGRPO, the target at K auto), one
    evaluation seed, two rounds: the report's section says how each arm's rollout diversity tracked the target, the
    K auto chose, and the target's goals with their numbers."""
    from dgrpo_lab.arms import TARGET_PRESETS
    from dgrpo_lab.target import tracking

    from dgrpo.store import LocalStore

    presets = {k: TARGET_PRESETS[k] for k in ("flowgrpo", "diversegrpo", "target-kauto")}
    overrides = TINY | {"rounds": 2, "eval.every": 2, "train.profile_groups": 2}
    paths = run_experiment(tmp_path, overrides=overrides, log=lambda _: None, jobs=1, seeds=[3], presets=presets,
                           html=False)
    text = paths["markdown"].read_text()
    assert "## Diversity target" in text and "method-per-seed" in text
    section = text[text.index("## Diversity target"):]
    rows = [line for line in section.splitlines() if line.startswith("| target-kauto |")]
    assert len(rows) == 1 and rows[0].split("|")[-2].strip().isdigit()  # the K auto chose
    assert rows[0].split("|")[3].strip() == "probe"  # the band is judged on what the controller measures
    assert [line.split("|")[3].strip() for line in section.splitlines() if line.startswith("| flowgrpo |")] == [
        "rollouts"]
    arm = build_arms(CONFIGS, overrides=overrides, presets=presets)[2]
    measured = tracking(LocalStore(tmp_path / "store"), run_id_of("target-kauto", with_seed(arm.config, 3)), 0.95)
    assert measured["final_share"] > 0 and 0 <= measured["in_band"] <= 1 and measured["k"] >= 1


def test_tracking_judges_the_band_on_the_probe_where_a_run_has_one(monkeypatch):
    """The band from round 5 on the probe when every round has one (else on the rollouts), beside the rollouts' own
    deviation and the shortfall below the target alone; shares of the first 3 rounds' mean (1.0 here)."""
    from types import SimpleNamespace

    import dgrpo_lab.target as target

    probe = [1.0, 1.0, 1.0, 0.97, 0.96, 0.93, 0.96, 1.02]
    rollouts = [1.0, 1.0, 1.0, 0.80, 1.10, 0.95, 0.95, 0.95]  # round 4's 0.80 is before round 5
    events = [SimpleNamespace(stage="cluster", round=r, metrics={"diversity_probe": p, "diversity_mean": d})
              for r, (p, d) in enumerate(zip(probe, rollouts, strict=True))]
    monkeypatch.setattr(target, "load_events", lambda store, run_id: events)
    measured = target.tracking(None, "run", 0.95)
    assert measured["probed"] == 1.0
    assert measured["max_deviation"] == pytest.approx(0.07) and measured["max_shortfall"] == pytest.approx(0.02)
    assert measured["max_deviation_rollouts"] == pytest.approx(0.15) and measured["in_band"] == pytest.approx(0.75)
    for e in events:
        del e.metrics["diversity_probe"]
    unprobed = target.tracking(None, "run", 0.95)
    assert unprobed["probed"] == 0.0 and unprobed["max_deviation"] == pytest.approx(0.15)
    assert unprobed["max_shortfall"] == 0.0
