"""The bad-input catalogue: what a careless or hostile operator types, the one line `dgrpo` answers, and proof that
nothing stored changed.

Every case names the class of input it stands for (config field, CLI argument, file, id, URI, artifact from a
swapped stage, environment), the input, and the text its one error line must contain. Each runs the real entry
point (`dgrpo_pipelines.main.main`, what the `dgrpo` script calls) in this process against a store holding one
committed round, and compares every file under the test's directories, and every request the KFP API received,
before and after. The values a person naturally writes that must work are at the end.
"""

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dgrpo_pipelines.main import main
from reliability_helpers import snapshot, tiny_config
from support import small_config

from dgrpo.contracts import REWARDS, SCORES
from dgrpo.runtime.engine import run_inprocess
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.shared.exchange import import_table
from dgrpo.store import ArtifactRef, LocalStore

PLUGINS = Path(__file__).parent / "plugins"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY"
HF_TOKEN = "hf_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bD1fH3k"
WANDB = "0123456789abcdef0123456789abcdef01234567"
OPENAI = "sk-proj-" + "Ab3dE5gH7jK9mN1pQ3sT5vW7yZ9b"


@dataclass
class Case:
    id: str
    kind: str
    """config, cli, file, id, uri, artifact or env: the class of user-facing input."""
    argv: list[str]
    """{store}, {dir}, {host} are filled in; files named in `files` are written under {dir} first."""
    error: str
    """Text the one error line must contain."""
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


def _parquet(table: pa.Table, contract=None) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(contract.metadata()) if contract else table, sink)
    return sink.getvalue()


def _rewards(reward=(0.5, float("nan")), drop=()) -> pa.Table:
    table = pa.table({"sample_id": ["r0/p0/s0", "r0/p0/s1"], "group_id": ["r0/p0"] * 2, "prompt": ["p"] * 2,
                      "reward": pa.array(reward, pa.float64()),
                      "components": pa.array([[("q", 0.5)]] * 2, REWARDS.schema.field("components").type)})
    return table.drop_columns(list(drop))


RUN = ["run", "--engine", "inprocess", "--store", "{store}", "--output", "{dir}/out"]
CASES = [
    # config fields: ranges, finiteness, names, plug-ins, secrets, types
    Case("lr-too-large", "config", RUN + ["--set", "train.learning_rate=1e6"],
         "config field 'train.learning_rate': must be > 0 and <= 1, got 1000000.0"),
    Case("nan-guidance", "config", RUN + ["--set", "sampling.guidance_scale=.nan"],
         "config field 'sampling.guidance_scale': must be a finite number, got nan"),
    Case("inf-in-reward-options", "config", RUN + ["--set", "reward.options={scale: .inf}"],
         "config field 'reward.options.scale': must be a finite number, got inf"),
    Case("misspelled-field", "config", RUN + ["--set", "train.lerning_rate=0.1"],
         "config field 'train.lerning_rate': unknown field"),
    Case("unknown-reward", "config", RUN + ["--set", "reward.name=pickscor"],
         "config field 'reward.name': unknown reward 'pickscor'"),
    Case("unknown-reward-at-compile", "config", ["compile", "-o", "{dir}/p.yaml", "--set", "reward.name=pickscor"],
         "config field 'reward.name': unknown reward 'pickscor'"),
    Case("unimportable-model", "config", RUN + ["--set", "model.kind=acme_models.sd4:load"],
         "config field 'model.kind': cannot import module 'acme_models.sd4'"),
    Case("malformed-plugin-path", "config", ["compile", "-o", "{dir}/p.yaml", "--set",
                                             "cluster.embedder=acme:embed-v2"],
         "config field 'cluster.embedder': 'acme:embed-v2' is not a 'package.module:factory' path"),
    Case("unknown-mode-classifier", "config", RUN + ["--set", "eval.mode_classifier=quadrants"],
         "config field 'eval.mode_classifier': unknown mode classifier 'quadrants'"),
    Case("misspelled-plugin-option", "config", RUN + ["--set", "reward.name=acme_rewards:brightness",
                                                      "--set", "reward.options={scael: 2}"],
         "config field 'reward.options': got an unexpected keyword argument 'scael'"),
    Case("token-in-k8s-env", "config", ["compile", "-o", "{dir}/p.yaml", "--set",
                                        "kubernetes.defaults.env={HF_TOKEN: " + HF_TOKEN + "}"],
         "config field 'kubernetes.defaults.env.HF_TOKEN': its name says it holds a secret"),
    Case("aws-key-in-stage-env", "config", ["compile", "-o", "{dir}/p.yaml", "--set",
                                            "kubernetes.stages.update.env={KEYS: AKIAIOSFODNN7EXAMPLE}"],
         "config field 'kubernetes.stages.update.env.KEYS': looks like an AWS access key id"),
    Case("password-in-model-uri", "config", RUN + ["--set", f"model.pretrained=https://me:{SECRET}@hub.example/m"],
         "config field 'model.pretrained': looks like a password in a URI"),
    Case("zero-rounds", "config", RUN + ["--set", "rounds=0"], "config field 'rounds': must be > 0, got 0"),
    Case("words-for-numbers", "config", RUN + ["--set", "sampling.group_size=eight"],
         "config field 'sampling.group_size': expected int, got str 'eight'"),
    Case("override-under-a-single-value", "config", RUN + ["--set", "rounds=2", "--set", "rounds.x=1"],
         "config overrides 'rounds' and 'rounds.x' conflict: 'rounds' is set to a single value (2)"),
    Case("password-under-a-db-name", "config", ["compile", "-o", "{dir}/p.yaml", "--set",
                                                "kubernetes.defaults.env={PGPASSWORD: hunter2}"],
         "config field 'kubernetes.defaults.env.PGPASSWORD': its name says it holds a secret"),
    Case("wandb-key-in-stage-env", "config", ["compile", "-o", "{dir}/p.yaml", "--set",
                                              "kubernetes.stages.update.env={WANDB_KEY: " + WANDB + "}"],
         "config field 'kubernetes.stages.update.env.WANDB_KEY': its name says it holds a secret"),
    Case("openai-key-under-any-name", "config", ["compile", "-o", "{dir}/p.yaml", "--set",
                                                 "reward.options={endpoint_cfg: " + OPENAI + "}"],
         "config field 'reward.options.endpoint_cfg': looks like an OpenAI or Anthropic API key"),
    Case("raw-secret-key-in-env", "config", ["compile", "-o", "{dir}/p.yaml", "--set",
                                             "kubernetes.defaults.env={S3_LOGIN: '" + SECRET + "'}"],
         "config field 'kubernetes.defaults.env.S3_LOGIN': looks like a high-entropy token"),
    # command-line arguments
    Case("set-without-value", "cli", RUN + ["--set", "rounds"], "--set 'rounds': expected key.path=value"),
    Case("unknown-engine", "cli", RUN[:2] + ["kfpp"] + RUN[3:], "'kfpp': expected one of kfp, inprocess"),
    Case("unknown-option", "cli", RUN + ["--rounds", "3"], "No such option: --rounds"),
    Case("zero-jobs", "cli", ["experiment", "--jobs", "0", "--output", "{dir}/exp"],
         "Invalid value for '--jobs': Input should be greater than or equal to 1"),
    Case("set-given-twice", "cli", RUN + ["--set", "train.learning_rate=0.001", "--set", "train.learning_rate=0.5"],
         "--set 'train.learning_rate' is given twice"),
    Case("key-twice-in-a-set-value", "cli", RUN + ["--set", "train={learning_rate: 0.001, learning_rate: 0.5}"],
         "--set 'train': key 'learning_rate' is given twice"),
    Case("five-field-cron", "cli", ["schedule", "--host", "{host}", "--store", "s3://bucket/p", "--run-id", "ft",
                                    "--cron", "0 2 * * *"], "--cron '0 2 * * *': KFP cron has 6 fields"),
    # files
    Case("missing-config-file", "file", RUN + ["--config", "{dir}/nope.yaml"],
         "nope.yaml': cannot read: No such file or directory"),
    Case("broken-yaml", "file", RUN + ["--config", "{dir}/broken.yaml"], "broken.yaml': invalid YAML",
         files={"broken.yaml": b"rounds: [1\n"}),
    Case("key-twice-in-a-config-file", "file", RUN + ["--config", "{dir}/twice.yaml"],
         "twice.yaml': key 'train.learning_rate' is given twice, on lines 2 and 4",
         files={"twice.yaml": b"train:\n  learning_rate: 0.001\n  clip_range: 0.01\n  learning_rate: 0.5\n"}),
    Case("empty-prompts-file", "file", RUN + ["--set", "sampling.prompts_file={dir}/prompts.txt"],
         "config field 'sampling.prompts_file' (in overrides)", files={"prompts.txt": b"\n"}),
    Case("not-parquet", "file", ["contract", "check", "reward", "{dir}/notes.txt"],
         "notes.txt: neither a Parquet table nor a KFP artifact file", files={"notes.txt": b"hello"}),
    Case("broken-artifact-file", "file", ["lineage", "{dir}/ref.json"], "ref.json: not a dgrpo artifact reference",
         files={"ref.json": b'{"kind": "lora_adapter"'}),
    Case("missing-file-to-check", "file", ["contract", "check", "reward", "{dir}/rewards.parquet"],
         "rewards.parquet: no such file"),
    Case("missing-reference-file", "file", ["lineage", "{dir}/adapter.json", "--store", "{store}"],
         "adapter.json: no such file"),
    # ids: run ids, artifact ids
    Case("unknown-artifact", "id", ["lineage", "0" * 64, "--store", "{store}"],
         f"no lineage record for artifact {'0' * 64}"),
    Case("not-a-sha256", "id", ["lineage", "adapter-of-round-3", "--store", "{store}"],
         "'adapter-of-round-3': expected a sha256"),
    Case("unknown-sha-prefix", "id", ["lineage", "0123456789ab", "--store", "{store}"],
         "artifact 0123456789ab: no lineage records in file://"),
    Case("report-of-unknown-run", "id", ["report", "nosuch", "--store", "{store}"],
         "run nosuch: no evaluation recorded"),
    Case("verify-unknown-run", "id", ["verify", "nosuch", "--store", "{store}"], "run 'nosuch': no records"),
    Case("resume-with-another-lora", "id", RUN + ["--resume", "ft", "--set", "lora.rank=4"],
         "--resume 'ft': the recipe differs from the fine-tune's in "),
    Case("fresh-run-under-a-used-id", "id", RUN + ["--run-id", "ft"], "run ft already has committed rounds in file://"),
    Case("status-of-a-mistyped-store", "id", ["status", "ft", "--store", "{dir}/stroe"],
         "stroe: does not exist; check the path"),
    Case("report-of-a-mistyped-store", "id", ["report", "ft", "--store", "file://{dir}/stroe"],
         "stroe: does not exist; check the path"),
    Case("verify-a-mistyped-store", "id", ["verify", "ft", "--store", "{dir}/stroe"],
         "stroe: does not exist; check the path"),
    Case("lineage-in-a-mistyped-store", "id", ["lineage", "0123456789ab", "--store", "{dir}/stroe"],
         "stroe: does not exist; check the path"),
    # URIs
    Case("credentials-in-store-uri", "uri", RUN[:4] + [f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@bucket/p"] + RUN[5:],
         "'s3://***@bucket/p': credentials do not belong in the store URI"),
    Case("unknown-scheme", "uri", ["report", "ft", "--store", "gs://bucket/p"], "unsupported scheme 'gs'"),
    Case("credentials-sent-to-kfp", "uri", ["submit", "--host", "{host}", "--store", f"s3://k:{SECRET}@bucket/p"],
         "--store 's3://***@bucket/p': credentials do not belong"),
    Case("local-path-for-a-cluster", "uri", ["submit", "--host", "{host}", "--store", "outputs/store"],
         "a cluster run needs a store URI its pods reach"),
    # artifacts from swapped stages
    Case("nan-reward-from-a-team", "artifact", ["contract", "check", "reward", "{dir}/r.parquet"],
         "column 'reward' holds 1 NaN and 0 infinite values (first at row 1, sample_id 'r0/p0/s1')",
         files={"r.parquet": _parquet(_rewards(), REWARDS)}),
    Case("missing-column", "artifact", ["contract", "check", "reward", "{dir}/r.parquet"],
         "missing column 'components'", files={"r.parquet": _parquet(_rewards((0.5, 0.5), ["components"]), REWARDS)}),
    Case("scores-for-a-reward-stage", "artifact", ["contract", "check", "reward", "{dir}/s.parquet"],
         "declares contract 'scores'; stage reward reads and writes rollouts, rewards",
         files={"s.parquet": _parquet(pa.table({"sample_id": ["a"]}), SCORES)}),
    Case("one-sample-twice", "artifact", ["contract", "check", "reward", "{dir}/r.parquet"],
         "column 'sample_id' repeats sample 'r0/p0/s0' (rows 0 and 1)", files={"r.parquet": _parquet(
             _rewards((0.5, 0.5)).set_column(0, "sample_id", pa.array(["r0/p0/s0"] * 2)), REWARDS)}),
    Case("reward-as-text", "artifact", ["contract", "check", "rewards", "{dir}/r.parquet"],
         "column 'reward' has type string", files={"r.parquet": _parquet(
             _rewards((0.5, 0.5)).set_column(3, "reward", pa.array(["high", "low"])), REWARDS)}),
    # environment
    Case("attempts-not-a-number", "env", ["report", "ft", "--store", "s3://bucket/p"],
         "environment variable DGRPO_S3_MAX_ATTEMPTS='many': expected an integer",
         env={"DGRPO_S3_MAX_ATTEMPTS": "many"}),
    Case("endless-read-timeout", "env", ["report", "ft", "--store", "s3://bucket/p"],
         "DGRPO_S3_READ_TIMEOUT_S='100000': must be between 1 and 3600", env={"DGRPO_S3_READ_TIMEOUT_S": "100000"}),
    Case("credentials-in-endpoint", "env", ["report", "ft", "--store", "s3://bucket/p"],
         "DGRPO_S3_ENDPOINT_URL='http://***@seaweedfs:8333': credentials do not belong",
         env={"DGRPO_S3_ENDPOINT_URL": f"http://admin:{SECRET}@seaweedfs:8333"}),
    Case("s3-endpoint-without-url", "env", ["report", "ft", "--store", "s3://bucket/p"],
         "environment variable DGRPO_S3_ENDPOINT: not a variable dgrpo reads (did you mean DGRPO_S3_ENDPOINT_URL?)",
         env={"DGRPO_S3_ENDPOINT": "http://127.0.0.1:9"}),
    Case("misspelled-variable-before-a-run", "env", RUN, "environment variable DGRPO_S3_MAX_ATTEMPT: not a "
         "variable dgrpo reads (did you mean DGRPO_S3_MAX_ATTEMPTS?)", env={"DGRPO_S3_MAX_ATTEMPT": "3"}),
    Case("misspelled-variable-for-the-pods", "config", ["compile", "-o", "{dir}/p.yaml", "--set",
                                                        "kubernetes.defaults.env={DGRPO_S3_ENDPOINT: http://s3:8333}"],
         "config field 'kubernetes.defaults.env.DGRPO_S3_ENDPOINT': DGRPO_S3_ENDPOINT is not a variable dgrpo reads "
         "(did you mean DGRPO_S3_ENDPOINT_URL?)"),
    Case("kfp-endpoint-unset", "env", ["submit", "--store", "s3://bucket/p"], "Missing option '--host'",
         env={"KF_PIPELINES_ENDPOINT": ""}),
]


@pytest.fixture(scope="module")
def committed_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue") / "store"
    run_inprocess(StageContext(tiny_config(rounds=1), LocalStore(root), "ft"))
    return root


def test_the_catalogue_covers_every_class_of_input():
    kinds = {c.kind for c in CASES}
    assert kinds == {"config", "cli", "file", "id", "uri", "artifact", "env"}
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_clear_line_and_changes_nothing(case, committed_store, tmp_path, kfp_api,
                                                          monkeypatch, capsys):
    host, requests = kfp_api.url, kfp_api.requests
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.chdir(tmp_path)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value) if value else monkeypatch.delenv(key, raising=False)
    for name, data in case.files.items():
        (tmp_path / name).write_bytes(data)
    fill = {"{store}": str(committed_store), "{dir}": str(tmp_path), "{host}": host}
    argv = [a.replace("{store}", fill["{store}"]).replace("{dir}", fill["{dir}"]).replace("{host}", fill["{host}"])
            for a in case.argv]
    before = snapshot(committed_store, tmp_path)

    code = main(argv)

    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and case.error in lines[0], lines[0]
    assert all(secret not in out + err for secret in (SECRET, HF_TOKEN, WANDB, OPENAI, "hunter2"))
    assert "Traceback" not in out + err
    assert snapshot(committed_store, tmp_path) == before
    assert [r for r in requests if r[0] == "POST"] == []  # nothing reached the KFP API's run records


def test_debug_adds_the_traceback_still_redacted(committed_store, tmp_path, capsys):
    argv = ["report", "ft", "--store", f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@bucket/p"]
    assert main(argv + ["--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "check_store_uri" in err and SECRET not in err
    assert err.strip().splitlines()[-1].startswith("error: --store 's3://***@bucket/p': credentials do not belong")
    assert main(argv) == 1 and "Traceback" not in capsys.readouterr().err


def test_a_swapped_stage_writing_other_samples_is_refused_and_nothing_is_stored(committed_store, tmp_path):
    """A team's reward component answering for samples it was not given: refused before anything is stored."""
    store = LocalStore(shutil.copytree(committed_store, tmp_path / "store"))
    ctx = StageContext(tiny_config(rounds=1), store, "ft")
    rollouts = store.get_json("runs/ft/events/r0000-rollout.json")
    path = tmp_path / "rewards.parquet"
    path.write_bytes(_parquet(_rewards((0.5, 0.5)), REWARDS))
    before = snapshot(tmp_path / "store")
    with pytest.raises(ValueError, match=r"does not match its input rollouts sample for sample \(column 'sample_id'\)"):
        import_table(ctx, 0, "reward", "rewards", str(path),
                     {"rollouts": ArtifactRef(**rollouts["outputs"]["rollouts"])}, "team/reward:1")
    assert snapshot(tmp_path / "store") == before


@pytest.mark.parametrize("overrides", [
    {"train.learning_rate": "1e-4"},  # YAML 1.1 reads this as a string; a person means the number
    {"train.learning_rate": "3E-4", "train.weight_decay": "0"},
    {"reward.options": {}, "cluster.embedder_options": {"batch_size": 8}},
    {"kubernetes.defaults.env": {"TOKENIZERS_PARALLELISM": "false", "AWS_SHARED_CREDENTIALS_FILE": "/creds/aws",
                                 "HF_HUB_OFFLINE": "1", "AWS_REGION": "eu-west-1"}},
    {"kubernetes.defaults.secrets": [{"secret": "s3-credentials", "env": {"aws_secret_access_key":
                                                                          "AWS_SECRET_ACCESS_KEY"}}]},
    {"model.pretrained": "stabilityai/stable-diffusion-3.5-medium", "model.kind": "toy"},
])
def test_values_a_person_naturally_writes_load(overrides):
    small_config(**overrides)


def test_natural_store_uris_and_numbers_work_end_to_end(tmp_path, capsys):
    """compile with a number written as 1e-4 and the pods' store given as file:///..."""
    assert main(["compile", "-o", str(tmp_path / "p.yaml"), "--set", "rounds=1", "--set",
                 "train.learning_rate=1e-4"]) == 0
    assert (tmp_path / "p.yaml").is_file()
    (tmp_path / "fresh").mkdir()
    assert main(["report", "ft", "--store", f"file://{tmp_path}/fresh"]) == 1  # a valid URI, an empty store
    assert "run ft: no evaluation recorded" in capsys.readouterr().err


def test_the_installed_script_is_the_one_line_entry_point():
    scripts = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert 'dgrpo = "dgrpo_pipelines.main:main"' in scripts


def test_the_compiler_itself_refuses_an_unknown_plugin(tmp_path):
    """Not only the CLI: whoever compiles the pipeline (a notebook, a CI job) gets the check before a pod does."""
    from dgrpo_pipelines.training import compile_pipeline

    from dgrpo.config import ConfigError

    with pytest.raises(ConfigError, match="config field 'model.kind': unknown policy 'sd4'"):
        compile_pipeline(tiny_config(**{"model.kind": "sd4"}), tmp_path / "p.yaml")
    assert not (tmp_path / "p.yaml").exists()


def _rewards_for(store: LocalStore, event: dict) -> pa.Table:
    """A reward table answering exactly the stored round's rollouts, key columns copied from them."""
    from dgrpo import artifacts
    from dgrpo.contracts import ROLLOUTS

    rollouts = artifacts.read_table(store, ArtifactRef(**event["outputs"]["rollouts"]), ROLLOUTS)
    n = rollouts.num_rows
    return pa.table({name: rollouts.column(name) for name in ("sample_id", "group_id", "prompt")} | {
        "reward": pa.array([0.5] * n, pa.float64()),
        "components": pa.array([[("q", 0.5)]] * n, REWARDS.schema.field("components").type)})


@pytest.mark.parametrize(("column", "error"), [
    ("group_id", r"column 'group_id' of sample 'r0/p0/s\d+' is 'r0/p1', but its input rollouts have 'r0/p0'"),
    ("prompt", r"column 'prompt' of sample 'r0/p0/s\d+' is 'a blue cross', but its input rollouts have"),
])
def test_a_swapped_stage_rewriting_a_key_column_is_refused(committed_store, tmp_path, column, error):
    """A team's reward that moves a sample to another group (or prompt): the cluster stage would cluster two prompts
    as one group and the round commit. Refused at import, naming the column and a sample; the same table with the
    rollouts' keys imports."""
    store = LocalStore(shutil.copytree(committed_store, tmp_path / "store"))
    ctx = StageContext(tiny_config(rounds=1), store, "ft")
    event = store.get_json("runs/ft/events/r0000-rollout.json")
    honest = _rewards_for(store, event)
    groups = honest.column("group_id").to_pylist()
    assert groups[0] == "r0/p0" and "r0/p1" in groups  # the changed value is another real group
    changed = {"group_id": "r0/p1", "prompt": "a blue cross"}[column]
    values = honest.column(column).to_pylist()
    values[1] = changed
    swapped = honest.set_column(honest.column_names.index(column), column, pa.array(values))
    path = tmp_path / "rewards.parquet"
    path.write_bytes(_parquet(swapped, REWARDS))
    inputs = {"rollouts": ArtifactRef(**event["outputs"]["rollouts"])}
    before = snapshot(tmp_path / "store")
    with pytest.raises(ValueError, match=error):
        import_table(ctx, 0, "reward", "rewards", str(path), inputs, "team/reward:1")
    assert snapshot(tmp_path / "store") == before
    path.write_bytes(_parquet(honest, REWARDS))
    assert import_table(ctx, 0, "reward", "rewards", str(path), inputs, "team/reward:1").outputs["rewards"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_store_objects_follow_the_umask_and_stay_atomic(tmp_path, umask):
    """A shared or NFS store is read by another UID (the images run as 10001): objects get the umask's mode, not
    mkstemp's 0600; a write is still a temp file renamed into place (no temp file left behind)."""
    import os
    import stat

    old = os.umask(umask)
    try:
        store = LocalStore(tmp_path / "store")
        ref = store.put(b"weights", "lora_adapter", ".safetensors")
        store.put_json("runs/ft/claim.json", {"holder": "a"})
        assert store.create_json("runs/ft/lease.json", {"holder": "a"})
    finally:
        os.umask(old)
    for path in (store.local_path(ref), store.root / "runs/ft/claim.json", store.root / "runs/ft/lease.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert not [p for p in store.root.rglob("*.tmp")]


def test_a_read_only_command_leaves_a_mistyped_store_uncreated(tmp_path):
    from dgrpo.store import StoreError, open_store

    with pytest.raises(StoreError, match=r"store .*stroe: does not exist; check the path"):
        open_store(str(tmp_path / "stroe"), "--store", create=False)
    assert not (tmp_path / "stroe").exists()
    assert open_store(str(tmp_path / "new"), "--store").root.is_dir()  # a run still creates its store


def test_cosine_distances_slightly_negative_from_rounding_cluster(tmp_path):
    """A team's own embedder: 1 - cos in float32 of near-duplicate images is slightly negative (about -5e-7 here);
    within NEGATIVE_TOLERANCE it counts as 0, anything clearly negative is still refused."""
    import numpy as np

    from dgrpo.diversity import NEGATIVE_TOLERANCE, nearest_neighbour_width, spectral_clusters

    rng = np.random.default_rng(0)
    modes = rng.standard_normal((4, 1792)).astype(np.float32)
    x = np.repeat(modes, 8, axis=0) + 1e-4 * rng.standard_normal((32, 1792)).astype(np.float32)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = 1 - u @ u.T
    assert -NEGATIVE_TOLERANCE < d.min() < 0  # the input the old check refused
    labels = spectral_clusters(d)
    assert sorted(np.bincount(labels)) == [8, 8, 8, 8]
    assert all(len(set(labels[i * 8:(i + 1) * 8])) == 1 for i in range(4))
    assert nearest_neighbour_width(d) > 0
    bad = np.array(d, dtype=np.float64)
    bad[0, 1] = bad[1, 0] = -0.01
    with pytest.raises(ValueError, match=r"distances must be non-negative: \[0, 1\] is -0.01"):
        spectral_clusters(bad)


def test_every_dgrpo_variable_the_code_names_is_known():
    """The known list is what the check refuses against: a variable the code reads but the list lacks would stop
    every command (and every pod) that has it set."""
    import re

    from dgrpo.environment import KNOWN_VARIABLES

    root = Path(__file__).parents[1]
    files = [p for d in ("src", "components", "pipelines", "scripts", "images", "manifests")
             for p in (root / d).rglob("*")
             if p.is_file() and p.suffix in {".py", ".yaml", ".sh", ""} and p.name != "environment.py"]
    named = {m for p in files for m in re.findall(r"DGRPO_[A-Z0-9_]+", p.read_text(errors="replace"))
             if not m.endswith("_")}  # DGRPO_S3_{name}: a prefix completed in code
    assert "DGRPO_S3_ENDPOINT_URL" in named and "DGRPO_CODE_VERSION" in named
    assert sorted(named - set(KNOWN_VARIABLES)) == []


def test_report_renders_from_a_store_it_cannot_write(committed_store, tmp_path, monkeypatch, capsys):
    """A read-only mount (or a store shared with another UID): `dgrpo report` prints the report and writes nothing
    into the store; the HTML report goes where -o says."""
    import errno

    def refuse(self, key, data):
        raise PermissionError(errno.EROFS, "Read-only file system", key)

    monkeypatch.setattr(LocalStore, "_write", refuse)
    monkeypatch.setattr(LocalStore, "_create", refuse)
    before = snapshot(committed_store)
    assert main(["report", "ft", "--store", str(committed_store)]) == 0
    assert capsys.readouterr().out.startswith("# dgrpo run ft\n")
    assert main(["report", "ft", "--store", str(committed_store), "--html", "-o", str(tmp_path / "ft.html")]) == 0
    assert (tmp_path / "ft.html").stat().st_size > 0 and snapshot(committed_store) == before


def test_a_copied_store_names_its_own_objects_not_the_old_location(committed_store, tmp_path, capsys):
    """status, report and lineage of a store copied elsewhere (a backup, another mount) point at the copy's objects:
    the old location may be gone, or worse, another run's store."""
    import json

    copy = shutil.copytree(committed_store, tmp_path / "copy")
    adapter = LocalStore(copy).get_json("runs/ft/commits/r000000.json")["adapter"]
    for argv in (["status", "ft"], ["status", "ft", "--json"], ["report", "ft"],
                 ["lineage", adapter["sha256"], "--json"], ["report", "ft", "--html", "-o", str(tmp_path / "r.html")]):
        assert main(argv + ["--store", str(copy)]) == 0, argv
        out = capsys.readouterr().out + ((tmp_path / "r.html").read_text() if "--html" in argv else "")
        assert str(copy) in out and str(committed_store) not in out, (argv, out)
    assert adapter["uri"].startswith(committed_store.as_uri())  # the records keep where they were written
    shown = json.loads(main(["status", "ft", "--json", "--store", str(copy)]) or capsys.readouterr().out)
    assert shown["final_adapter"]["uri"] == adapter["uri"].replace(committed_store.as_uri(), copy.as_uri())


def test_an_in_process_run_names_no_kfp_log(tmp_path, monkeypatch, capsys):
    """Only kfp.local writes task logs: the in-process engine prints no kfp.log path (which would never exist)."""
    import dgrpo_pipelines.local as local

    def stop_here(*_args, **_kwargs):
        raise RuntimeError("stopped before training")

    monkeypatch.setattr(local, "run_pipeline", stop_here)
    argv = ["run", "--set", "rounds=1", "--output", str(tmp_path / "out"), "--run-id", "ft"]
    for engine, named in (("inprocess", False), ("kfp", True)):
        assert main(argv + ["--engine", engine]) == 1
        out = capsys.readouterr().out
        assert "store " in out and ("kfp.log" in out) == named, out


def test_one_poll_reports_a_rounds_stages_in_the_order_they_ran(committed_store):
    """A poll that finds several stages done (a slow poll, a fast round) reports them in pipeline order, not the
    keys' order (which puts cluster before rollout)."""
    from dgrpo_pipelines.local import EventWatcher

    reported = []
    ctx = StageContext(tiny_config(rounds=1), LocalStore(committed_store), "ft")
    watcher = EventWatcher(ctx, lambda _done, _total, event: reported.append((event["round"], event["stage"])))
    watcher.seen.clear()  # as if the whole round finished between two polls
    watcher.poll()
    assert reported == [(0, "evaluate"), (0, "rollout"), (0, "reward"), (0, "cluster"), (0, "update"),
                        (1, "evaluate")]
