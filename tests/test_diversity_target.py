"""The diversity target (issue 27): the controller's step, its checks, and the cluster stage continuing from the state
the round trains from: beta rises when the rollouts' diversity is below the target and falls above it."""

import math

import numpy as np
import pytest
import torch
from support import small_config

from dgrpo import artifacts
from dgrpo.config import ConfigError
from dgrpo.contracts import SCORES
from dgrpo.diversity import mean_pairwise_distance
from dgrpo.methods.diversity_target import adapt, measure_diversity
from dgrpo.runs.lineage import Provenance
from dgrpo.stages.cluster import run_cluster
from dgrpo.stages.reward import run_reward
from dgrpo.stages.rollout import run_rollout
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.shared.policy_io import OPTIMIZER_KIND

TARGET = {"cluster.method": "diverse", "cluster.beta": 2.0, "train.regularizer": "sa", "train.sa_lambda": 1.0,
          "methods": {"diversity_target": {"fraction": 0.95, "gain_up": 2.0, "gain_down": 2.0, "error_clip": 0.2}}}
STEP = {"gain_up": 2.0, "gain_down": 2.0, "error_clip": 0.2, "bounds": [0.01, 30.0]}


def test_below_the_target_raises_above_it_lowers_and_bounds_hold():
    assert adapt(1.0, measured=0.4, target=0.5, **STEP) == pytest.approx(math.exp(2.0 * 0.2))  # e = 0.2
    assert adapt(1.0, measured=0.55, target=0.5, **STEP) == pytest.approx(math.exp(-2.0 * 0.1))  # e = -0.1
    assert adapt(1.0, measured=0.5, target=0.5, **STEP) == 1.0
    assert adapt(1.0, measured=0.0, target=0.5, **STEP) == pytest.approx(math.exp(0.4))  # e clipped to 0.2
    assert adapt(29.0, measured=0.0, target=0.5, **STEP) == 30.0  # clipped to the bound
    assert adapt(0.011, measured=9.0, target=0.5, **STEP) == 0.01
    uneven = STEP | {"gain_up": 4.0, "gain_down": 1.0}
    assert adapt(1.0, measured=0.45, target=0.5, **uneven) == pytest.approx(math.exp(4.0 * 0.1))
    assert adapt(1.0, measured=0.55, target=0.5, **uneven) == pytest.approx(math.exp(-1.0 * 0.1))


def test_measures_average_the_groups():
    rng = np.random.default_rng(0)
    groups = [rng.normal(size=(8, 5)) for _ in range(3)]
    assert measure_diversity(groups, "mean_distance") == pytest.approx(np.mean([mean_pairwise_distance(g)
                                                                                for g in groups]))
    same = [np.ones((8, 5))] * 2
    assert measure_diversity(same, "vendi") == pytest.approx(1.0)


@pytest.mark.parametrize(("options", "field", "words"), [
    ({"fraction": 0.9, "target": 0.3}, "methods.diversity_target.fraction", "exactly one"),
    ({}, "methods.diversity_target.fraction", "exactly one"),
    ({"fraction": 0.9, "adapt": ["beta", "beta"]}, "methods.diversity_target.adapt", "once each"),
    ({"fraction": 0.9, "beta_range": [2.0, 1.0]}, "methods.diversity_target.beta_range", "min <= max"),
])
def test_bad_options_name_the_field(options, field, words):
    with pytest.raises(ConfigError, match=rf"{field}.*{words}"):
        small_config(**{**TARGET, "methods": {"diversity_target": options}})


def test_a_coefficient_needs_the_part_it_adapts():
    with pytest.raises(ConfigError, match=r"methods.diversity_target.adapt.*cluster.method"):
        small_config(**{**TARGET, "cluster.method": "passthrough"})
    with pytest.raises(ConfigError, match=r"methods.diversity_target.adapt.*train.regularizer"):
        small_config(**{**TARGET, "train.regularizer": "none"})
    small_config(**{**TARGET, "train.regularizer": "none",
                    "methods": {"diversity_target": {"fraction": 0.9, "adapt": ["beta"]}}})


@pytest.fixture(scope="module")
def rollout_round(tmp_path_factory):
    from dgrpo.store import LocalStore

    store = LocalStore(tmp_path_factory.mktemp("target") / "store")
    ctx = StageContext(small_config(**TARGET), store, "target")
    rollouts = run_rollout(ctx, 0).outputs["rollouts"]
    return ctx, rollouts, run_reward(ctx, 0, rollouts).outputs["rewards"]


def _state(ctx, **control) -> artifacts.ArtifactRef:
    """An optimizer-state artifact holding only the controller's state, as a previous round's update leaves it."""
    prov = Provenance(stage="update", run_id="target", config_sha256="-", round=0, inputs={}, seeds={})
    tensors = {f"control.{k}": torch.tensor(v, dtype=torch.float64) for k, v in control.items()}
    return artifacts.write_tensors(ctx.store, tensors, OPTIMIZER_KIND, prov)


def test_first_round_sets_the_target_from_the_base_models_diversity(rollout_round):
    ctx, rollouts, rewards = rollout_round
    result = run_cluster(ctx, 0, rollouts, rewards)
    s = artifacts.read_table(ctx.store, result.outputs["scores"], SCORES).to_pydict()
    measured = result.metrics["diversity_measured"]
    assert measured == pytest.approx(result.metrics["diversity_mean"])  # the stage's own in-group diversity
    assert s["diversity_target"] == pytest.approx([0.95 * measured] * 16)
    assert s["diversity_smoothed"] == pytest.approx([measured] * 16)
    assert s["beta"] == [2.0] * 16 and s["sa_lambda"] == [1.0] * 16  # held during the base rounds


def test_the_base_is_the_mean_of_the_base_rounds_and_the_coefficients_hold_meanwhile(rollout_round):
    ctx, rollouts, rewards = rollout_round
    measured = run_cluster(ctx, 0, rollouts, rewards).metrics["diversity_measured"]
    second = run_cluster(ctx, 1, rollouts, rewards, optimizer_state=_state(
        ctx, beta=3.0, sa_lambda=0.5, diversity_target=0.95 * 2 * measured, diversity_smoothed=2 * measured))
    # round 1 of base_rounds 3: the base is the mean of round 0's 2d and this round's d; nothing adapts yet
    assert second.metrics["diversity_target"] == pytest.approx(0.95 * 1.5 * measured)
    assert second.metrics["diversity_smoothed"] == pytest.approx(0.7 * 2 * measured + 0.3 * measured)
    assert (second.metrics["beta"], second.metrics["sa_lambda"]) == (3.0, 0.5)


def test_the_controller_continues_from_the_state_the_round_trains_from(rollout_round):
    ctx, rollouts, rewards = rollout_round
    measured = run_cluster(ctx, 3, rollouts, rewards).metrics["diversity_measured"]
    below = run_cluster(ctx, 3, rollouts, rewards, optimizer_state=_state(
        ctx, beta=3.0, sa_lambda=0.5, diversity_target=measured * 1.1, diversity_smoothed=measured))
    above = run_cluster(ctx, 3, rollouts, rewards, optimizer_state=_state(
        ctx, beta=3.0, sa_lambda=0.5, diversity_target=measured * 0.9, diversity_smoothed=measured))
    grows = math.exp(2.0 * 0.1 / 1.1)  # e = (1.1 d - d) / (1.1 d), gain 2
    assert below.metrics["beta"] == pytest.approx(3.0 * grows) and below.metrics["sa_lambda"] == pytest.approx(
        0.5 * grows)
    assert above.metrics["beta"] < 3.0 and above.metrics["sa_lambda"] < 0.5
    for result in (below, above):
        s = artifacts.read_table(ctx.store, result.outputs["scores"], SCORES).to_pydict()
        assert set(s["beta"]) == {result.metrics["beta"]}
    # the bonus is paid at the adapted beta: the same clusters, the bonus scaled by beta's ratio
    b, a = (np.asarray(artifacts.read_table(ctx.store, r.outputs["scores"], SCORES).column("bonus"))
            for r in (below, above))
    np.testing.assert_allclose(b * above.metrics["beta"], a * below.metrics["beta"], rtol=1e-12)


def _run_cfg(**overrides):
    target = {"diversity_target": TARGET["methods"]["diversity_target"] | {"base_rounds": 1, "probe_prompts": 2,
                                                                           "probe_images": 4}}
    return small_config(**TARGET | {"methods": target, "train.structure_steps": "auto", "train.profile_groups": 2,
                                    "eval.every": 10, "eval.num_steps": 2, "cluster.k": 2} | overrides)


def test_a_fine_tune_holds_its_controller_state_across_rounds_and_a_resume(tmp_path):
    """Three rounds in one go against one round then a resume: the same beta and lambda each round, the same adapter;
    the update trains with the scores' lambda, carries the state in the optimizer state, and K comes from one
    recorded structure profile, named in the adapter's lineage. The controller measures a probe, and the store it
    leaves verifies."""
    from dgrpo.runs import lineage
    from dgrpo.runs.profiles import structure_profile_ref
    from dgrpo.runtime.engine import run_inprocess
    from dgrpo.runtime.report.summary import load_events
    from dgrpo.stages.structure_profile import read_profile
    from dgrpo.store import LocalStore

    store = LocalStore(tmp_path / "store")
    whole = run_inprocess(StageContext(_run_cfg(rounds=3), store, "whole"))
    run_inprocess(StageContext(_run_cfg(rounds=1), store, "ft"))
    resumed = run_inprocess(StageContext(_run_cfg(rounds=3), store, "ft"), resume_from="ft")
    assert resumed["adapter"].sha256 == whole["adapter"].sha256

    def by_round(run_id: str, stage: str) -> dict[int, dict]:
        return {e.round: {k: v for k, v in e.metrics.items() if not k.endswith("seconds")}
                for e in load_events(store, run_id) if e.stage == stage}

    clusters, updates = by_round("whole", "cluster"), by_round("whole", "update")
    assert by_round("ft", "cluster") == clusters
    targets = {m["diversity_target"] for m in clusters.values()}
    assert len(targets) == 1  # fixed in the first round: 0.95 of the base model's
    assert targets.pop() == pytest.approx(0.95 * clusters[0]["diversity_probe"])
    assert all(m["diversity_measured"] == m["diversity_probe"] != m["diversity_mean"] for m in clusters.values())
    from dgrpo.runtime.verify import verify_run

    assert verify_run(store, "whole").problems == [] and verify_run(store, "ft").problems == []
    for r in (1, 2):  # each round continues from the last: beta moved by the smoothed gap
        smoothed = 0.7 * clusters[r - 1]["diversity_smoothed"] + 0.3 * clusters[r]["diversity_measured"]
        assert clusters[r]["diversity_smoothed"] == pytest.approx(smoothed, rel=1e-12)
        gap = (clusters[r]["diversity_target"] - smoothed) / clusters[r]["diversity_target"]
        step = math.exp(2.0 * min(max(gap, -0.2), 0.2))
        assert clusters[r]["beta"] == pytest.approx(clusters[r - 1]["beta"] * step, rel=1e-12)
        assert updates[r]["sa_lambda"] == clusters[r]["sa_lambda"]
    state = artifacts.read_tensors(store, whole["optimizer_state"], OPTIMIZER_KIND)
    assert float(state["control.beta"]) == clusters[2]["beta"]
    assert float(state["control.sa_lambda"]) == clusters[2]["sa_lambda"]

    profile = structure_profile_ref(store, "whole")
    k = read_profile(store, profile).structure_steps
    assert {m["structure_steps"] for m in updates.values()} == {float(min(k, _run_cfg().num_train_steps))}
    assert lineage.read_record(store, whole["adapter"].sha256).inputs["structure_profile"] == profile.sha256

    from dgrpo.runtime.report.page import render_html
    from dgrpo.runtime.report.plots import ROLLOUT_LABELS

    html = render_html(store, ["whole"])
    for key in ("diversity_mean", "beta", "sa_lambda", "colour_entropy", "dark_pixel_share"):
        assert ROLLOUT_LABELS[key] in html, key


def test_the_update_trains_with_the_lambda_the_scores_record(rollout_round, monkeypatch):
    """The SA-Reg term is weighted by the scores table's sa_lambda, not train.sa_lambda: a different recorded lambda
    gives a different adapter."""
    from dgrpo.stages.update import UpdateInputs, train_round

    ctx, rollouts, rewards = rollout_round
    ctx = StageContext(small_config(**TARGET, **{"train.inner_epochs": 2}), ctx.store, ctx.run_id)  # the first step
    adapters = []                                                 # leaves the base model, the second feels SA-Reg
    for sa_lambda in (0.5, 8.0):
        scores = run_cluster(ctx, 3, rollouts, rewards, optimizer_state=_state(  # past the base rounds
            ctx, beta=2.0, sa_lambda=sa_lambda / math.exp(0.4), diversity_target=10.0,
            diversity_smoothed=0.0))  # far below: e = +0.2
        result = train_round(ctx, UpdateInputs(3, [rollouts], scores.outputs["scores"]))
        assert result.metrics["sa_lambda"] == pytest.approx(sa_lambda)
        adapters.append(result.outputs["adapter"].sha256)
    assert adapters[0] != adapters[1]


def test_k_is_the_fewest_first_steps_holding_the_share():
    from dgrpo.stages.structure_profile import StructureProfile

    profile = StructureProfile(diversity=[0.5, 0.6, 0.65, 0.66, 0.66], share=0.8, prompts=["p"], group_size=8)
    assert profile.sensitivity == pytest.approx([0.1, 0.05, 0.01, 0.0])  # cumulative shares 0.625, 0.9375, 1, 1
    assert profile.structure_steps == 2
    assert StructureProfile.from_json(profile.to_json()) == profile
    assert StructureProfile([0.5, 0.6, 0.65, 0.66], share=0.6, prompts=[], group_size=8).structure_steps == 1
    assert StructureProfile([0.5, 0.5, 0.4], share=0.8, prompts=[], group_size=8).structure_steps == 1  # none matters


def test_sharing_the_steps_noise_removes_diversity_on_the_toy(tmp_path):
    """The toy base model's profile: with every SDE step's noise shared only the initial noise varies a group, and
    the groups are clearly less diverse (measured 0.567 against 0.665; the margin 0.03 is a third of that gap, far
    above float differences between CPUs); the first steps hold most of what the steps add (K 2 of 10 measured)."""
    from dgrpo.stages.shared.policy_io import load_policy_for_round
    from dgrpo.stages.structure_profile import measure_profile
    from dgrpo.store import LocalStore

    cfg = small_config(**TARGET, **{"train.profile_groups": 6, "sampling.group_size": 16})
    policy = load_policy_for_round(StageContext(cfg, LocalStore(tmp_path), "p"), None, trainable=True,
                                   device="cpu")
    conditions = [(p, {k: v[0] for k, v in policy.encode_prompts([p]).items()})
                  for p in cfg.sampling.prompts[:cfg.train.profile_groups]]
    profile = measure_profile(policy, cfg, conditions)
    assert len(profile.diversity) == cfg.sampling.num_steps + 1
    assert profile.diversity[0] < profile.diversity[-1] - 0.03
    assert profile.structure_steps <= 4


def test_the_profile_takes_the_same_groups_however_many_processes_hold_them():
    """The first groups by id, in turn when there are fewer, gathered from every process's rollouts: one process
    holding all groups and two holding half each give the same conditions."""
    import pyarrow as pa

    from dgrpo.stages.structure_profile import profile_conditions

    def rows(groups):
        return pa.table({"group_id": groups, "prompt": [f"p-{g}" for g in groups], "conditioning": [
            artifacts.tensors_to_bytes({"emb": torch.full((2,), float(g[-1]))}) for g in groups]})

    groups = ["g3", "g1", "g0", "g2"]
    alone = profile_conditions(rows(groups), groups, 6, lambda parts: parts)
    assert [p for p, _ in alone] == ["p-g0", "p-g1", "p-g2", "p-g3", "p-g0", "p-g1"]
    first, second = rows(["g3", "g1"]), rows(["g0", "g2"])
    theirs: list = []

    class Gathered(Exception):
        pass

    def capture(parts):
        theirs.extend(parts)
        raise Gathered

    with pytest.raises(Gathered):  # what the second process contributes to the gather
        profile_conditions(second, groups, 6, capture)
    together = profile_conditions(first, groups, 6, lambda parts: parts + theirs)
    assert [(p, c["emb"].tolist()) for p, c in together] == [(p, c["emb"].tolist()) for p, c in alone]


PROBE = {"diversity_target": TARGET["methods"]["diversity_target"] | {"probe_prompts": 2, "probe_images": 4}}


def test_the_probe_draws_the_same_noise_every_round_and_the_controller_measures_it(tmp_path):
    """Common random numbers: with the policy unchanged, rounds 1 and 2 sample different rollouts but the same probe,
    over the shards however many there are; the controller measures the probe, the stage still logs the rollouts'."""
    from dgrpo.contracts import ROLLOUTS
    from dgrpo.stages.shared.probe import read_probe
    from dgrpo.store import LocalStore

    store = LocalStore(tmp_path / "store")
    ctx = StageContext(small_config(**TARGET | {"methods": PROBE}), store, "probe")

    def probe_of(*refs) -> dict:
        return {j: e for ref in refs for j, e in read_probe(artifacts.read_table(store, ref, ROLLOUTS)).items()}

    rounds = [run_rollout(ctx, r) for r in (0, 1)]
    probes = [probe_of(r.outputs["rollouts"]) for r in rounds]
    assert rounds[0].outputs["rollouts"].sha256 != rounds[1].outputs["rollouts"].sha256
    assert sorted(probes[0]) == [0, 1] and probes[0][0].shape == (4, probes[0][0].shape[1])
    for j in (0, 1):
        np.testing.assert_array_equal(probes[0][j], probes[1][j])
    assert rounds[0].metrics["probe_samples"] == 8.0

    shards = [run_rollout(ctx, 1, shard=i, shards=2).outputs["rollouts"] for i in (0, 1)]
    assert [sorted(probe_of(s)) for s in shards] == [[0], [1]]
    for j, e in probe_of(*shards).items():
        np.testing.assert_array_equal(e, probes[1][j])

    rollouts = rounds[0].outputs["rollouts"]
    result = run_cluster(ctx, 0, rollouts, run_reward(ctx, 0, rollouts).outputs["rewards"])
    assert result.metrics["diversity_probe"] == result.metrics["diversity_measured"] == pytest.approx(
        measure_diversity([probes[0][0], probes[0][1]], "mean_distance"))
    assert result.metrics["diversity_probe"] != result.metrics["diversity_mean"]


def test_a_probe_the_rollouts_lack_is_named(rollout_round):
    """Rollouts written without a probe (a swapped rollout stage, or a config changed mid-run) under a config that
    measures one: the error names the option and the column, never a silent fall back to the rollouts."""
    ctx, rollouts, rewards = rollout_round
    ctx = StageContext(small_config(**TARGET | {"methods": PROBE}), ctx.store, ctx.run_id)
    with pytest.raises(ValueError, match=r"probe_prompts is 2, but the rollouts of round 1 carry 0 probe prompts"):
        run_cluster(ctx, 0, rollouts, rewards)


def test_the_probe_takes_at_most_the_training_prompts():
    with pytest.raises(ConfigError, match=r"methods.diversity_target.probe_prompts.*at most the number of training"):
        small_config(**TARGET | {"methods": {"diversity_target": PROBE["diversity_target"] | {"probe_prompts": 7}}})


def test_rollouts_of_contract_v4_still_read_without_a_probe(rollout_round):
    """A team's rollout stage still writing rollouts v4 (before the probe column) is read, its probe null."""
    import io

    import pyarrow.parquet as pq

    from dgrpo import contracts
    from dgrpo.contracts import ROLLOUTS
    from dgrpo.contracts.tables import VERSION_KEY
    from dgrpo.stages.shared.probe import COLUMN, read_probe

    ctx, rollouts, _ = rollout_round
    table = artifacts.read_table(ctx.store, rollouts, ROLLOUTS).drop_columns([COLUMN])
    v4 = table.replace_schema_metadata(ROLLOUTS.metadata() | {VERSION_KEY: b"4"})
    buf = io.BytesIO()
    pq.write_table(v4, buf)
    read = contracts.from_parquet_bytes(buf.getvalue(), ROLLOUTS, "v4 rollouts")
    assert read.column(COLUMN).null_count == read.num_rows and read_probe(read) == {}
