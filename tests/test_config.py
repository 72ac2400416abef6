import pytest
from support import small_config

from dgrpo.config import ConfigError, load_config
from dgrpo.toyworld.presets import PRESETS_DIR, toy_preset


def test_defaults_are_the_toy_world():
    cfg = load_config()
    assert cfg.model.kind == "toy" and cfg.rounds >= 10
    assert cfg.eval_rounds()[0] == 0 and cfg.eval_rounds()[-1] == cfg.rounds


def test_unknown_field_named_with_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learnin_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"'train.learnin_rate': unknown field"):
        load_config(path)


def test_wrong_type_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sampling:\n  group_size: many\n")
    with pytest.raises(ConfigError, match=r"'sampling.group_size': expected int, got str"):
        load_config(path)


def test_invalid_value_named():
    with pytest.raises(ConfigError, match=r"'train.batch_size': must be a multiple of micro_batch_size"):
        load_config(None, {"train.batch_size": 10, "train.micro_batch_size": 4})


def test_hash_is_stable_and_sensitive():
    assert load_config().sha256() == load_config().sha256()
    assert load_config().sha256() != load_config(None, {"seed": 1}).sha256()


def test_preset_files_load():
    from pathlib import Path

    presets = [*Path(__file__).parents[1].glob("configs/*.yaml"), *PRESETS_DIR.glob("*.yaml")]
    assert len(presets) > 10
    for path in presets:
        load_config(path)


def test_base_file_is_merged_underneath(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "base.yaml").write_text(
        "rounds: 7\ntrain:\n  learning_rate: 0.5\n  clip_range: 0.01\n"
        "sampling:\n  prompts: [a red square, a blue cross]\n  prompts_per_round: 2\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: presets/base.yaml\ntrain:\n  clip_range: 0.02\nsampling:\n  prompts: [a red square]\n"
                     "  prompts_per_round: 1\n")
    cfg = load_config(child, {"rounds": 3})
    assert (cfg.rounds, cfg.train.learning_rate, cfg.train.clip_range) == (3, 0.5, 0.02)  # mappings merge
    assert cfg.sampling.prompts == ["a red square"]  # lists replace


def test_base_errors_name_the_file(tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loop.yaml.*loops back"):
        load_config(loop)
    missing = tmp_path / "child.yaml"
    missing.write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml.*cannot read"):
        load_config(missing)


def test_comparison_presets_differ_only_in_cluster_regulariser_and_baseline():
    for folder, family in ((PRESETS_DIR, "toy"), ("configs", "sd35m")):
        arms = [load_config(f"{folder}/{family}-{arm}.yaml").to_dict() for arm in ("flowgrpo", "sareg", "diversegrpo")]
        for arm in arms:
            for key in ("name", "cluster"):
                arm.pop(key)
            for key in ("regularizer", "sa_lambda", "structure_steps", "detail_baseline"):
                arm["train"].pop(key)
        assert arms[0] == arms[1] == arms[2]


def _write_prompt_config(tmp_path, prompts_text="# comment\na red square\n\n  a blue cross  \n#a yellow cross\n"):
    (tmp_path / "cfg" / "prompts").mkdir(parents=True)
    (tmp_path / "cfg" / "prompts" / "train.txt").write_text(prompts_text)
    path = tmp_path / "cfg" / "run.yaml"
    path.write_text("sampling:\n  prompts_file: prompts/train.txt\n  prompts_per_round: 2\n")
    return path


def test_prompts_file_is_read_relative_to_the_config_and_hashed(tmp_path, monkeypatch):
    import hashlib

    from dgrpo.config import config_from_json

    path = _write_prompt_config(tmp_path)
    monkeypatch.chdir(tmp_path)  # not the config's directory
    cfg = load_config(path)
    data = (tmp_path / "cfg" / "prompts" / "train.txt").read_bytes()
    assert cfg.sampling.prompts == ["a red square", "a blue cross"]
    assert cfg.sampling.prompts_file == "prompts/train.txt"
    assert cfg.sampling.prompts_sha256 == hashlib.sha256(data).hexdigest()
    before = cfg.sha256()
    (tmp_path / "cfg" / "prompts" / "train.txt").write_bytes(data + b"# only a comment changed\n")
    changed = load_config(path)
    assert changed.sampling.prompts == cfg.sampling.prompts and changed.sha256() != before
    (tmp_path / "cfg" / "prompts" / "train.txt").unlink()
    assert config_from_json(cfg.to_json()).sha256() == before  # stages rebuild it without the file
    saved = tmp_path / "saved.json"  # a run's recorded config loads back as a config file, without the file
    saved.write_text(cfg.to_json())
    assert load_config(saved).sha256() == before
    assert load_config(tmp_path / "saved.json", {"rounds": 3}).sampling.prompts == cfg.sampling.prompts


def test_prompts_file_jsonl_parquet_and_eval(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "p.jsonl").write_text('{"prompt": "a red square", "id": 1}\n\n{"prompt": " a blue cross "}\n')
    pq.write_table(pa.table({"prompt": ["a yellow cross", "a red square"], "n": [1, 2]}), tmp_path / "p.parquet")
    path = tmp_path / "c.yaml"
    path.write_text("sampling:\n  prompts_file: p.jsonl\n  prompts_per_round: 2\neval:\n  prompts_file: p.parquet\n")
    cfg = load_config(path)
    assert cfg.sampling.prompts == ["a red square", "a blue cross"]
    assert cfg.eval.prompts == ["a yellow cross", "a red square"] and len(cfg.eval.prompts_sha256) == 64


@pytest.mark.parametrize("name, content, message", [
    ("missing.txt", None, r"'sampling.prompts_file' \(in config file .*c.yaml'\): file '.*missing.txt': cannot read"),
    ("empty.txt", "# nothing\n\n", r"'sampling.prompts_file'.*empty.txt': holds no prompts"),
    ("bad.jsonl", '{"prompt": "a"}\n{"prompt": "b",}\n', r"'sampling.prompts_file'.*bad.jsonl' line 2: invalid JSON"),
    ("field.jsonl", '{"prompt": "a"}\n{"text": "b"}\n', r"field.jsonl' line 2: expected an object with a 'prompt'"),
    ("col.parquet", "parquet", r"col.parquet': no column 'prompt' \(columns: text\)"),
    ("p.csv", "a,b\n", r"p.csv': unsupported suffix '.csv'"),
])
def test_prompts_file_errors_name_field_and_file(tmp_path, name, content, message):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if content == "parquet":
        pq.write_table(pa.table({"text": ["a red square"]}), tmp_path / name)
    elif content is not None:
        (tmp_path / name).write_text(content)
    path = tmp_path / "c.yaml"
    path.write_text(f"sampling:\n  prompts_file: {name}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_prompts_file_excludes_inline_prompts(tmp_path, monkeypatch):
    path = _write_prompt_config(tmp_path)
    both = tmp_path / "cfg" / "both.yaml"
    both.write_text("sampling:\n  prompts_file: prompts/train.txt\n  prompts: [a red square]\n")
    with pytest.raises(ConfigError, match=r"'sampling.prompts' \(in config file .*both.yaml'\): set either"):
        load_config(both)
    child = tmp_path / "cfg" / "child.yaml"
    child.write_text("base: run.yaml\nsampling:\n  prompts: [a red square]\n  prompts_per_round: 1\n")
    with pytest.raises(ConfigError, match=r"reads them from prompts_file \(prompts/train.txt\); set sampling"):
        load_config(child)
    with pytest.raises(ConfigError, match=r"'sampling.prompts' \(in overrides\)"):
        load_config(path, {"sampling.prompts": ["a red square"]})
    cfg = load_config(path, {"sampling.prompts": ["a red square"], "sampling.prompts_file": None,
                             "sampling.prompts_per_round": 1})
    assert (cfg.sampling.prompts, cfg.sampling.prompts_file, cfg.sampling.prompts_sha256) == (["a red square"],
                                                                                             None, None)
    from dgrpo.config import SamplingConfig
    assert load_config(path, {"sampling.prompts_file": None}).sampling.prompts == SamplingConfig().prompts
    with pytest.raises(ConfigError, match=r"'sampling.prompts_sha256' \(in config file .*sha.yaml'\): written by"):
        (tmp_path / "sha.yaml").write_text("sampling:\n  prompts_sha256: abc\n")
        load_config(tmp_path / "sha.yaml")
    with pytest.raises(ConfigError, match=r"'eval.prompts_sha256': is written by the loader"):
        from dgrpo.config import config_from_dict
        config_from_dict({"eval": {"prompts_file": "x.txt"}})
    monkeypatch.chdir(tmp_path / "cfg" / "prompts")  # an override's file is relative to the working directory
    assert load_config(None, {"eval.prompts_file": "train.txt"}).eval.prompts == ["a red square", "a blue cross"]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"sampling.method": "ode"}, r"'sampling.method': must be one of sde, cps, got 'ode'"),
    ({"train.regularizer": "l2"}, r"'train.regularizer': must be one of none, kl, sa, both"),
    ({"kubernetes.stages.update.tolerations": [{"operator": "Maybe"}]},
     r"'kubernetes.stages.update.tolerations\[0\].operator': must be one of Equal, Exists"),
    ({"train.learning_rate": 1e6}, r"'train.learning_rate': must be > 0 and <= 1, got 1000000.0"),
    ({"train.learning_rate": 0}, r"'train.learning_rate': must be > 0"),
    ({"sampling.guidance_scale": float("nan")}, r"'sampling.guidance_scale': must be a finite number"),
    ({"train.adam_betas": [0.9, 1.5]}, r"'train.adam_betas\[1\]': must be >= 0 and < 1"),
    ({"seed": -1}, r"'seed': must be >= 0"),
    ({"kubernetes.stages.rollout.gpus": -2}, r"'kubernetes.stages.rollout.gpus': must be >= 0"),
    ({"kubernetes.stages.scorer": {"gpus": 1}}, r"'kubernetes.stages.scorer': is not a stage"),
    ({"pipeline.stages.update": {"image": "x", "command": ["y"]}}, r"'pipeline.stages.update': is not a swappable"),
])
def test_choices_and_ranges_come_from_the_field_types(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_every_numeric_field_declares_a_range():
    from dgrpo.config import RunConfig
    from dgrpo.config.fields import numeric_fields_without_range

    assert numeric_fields_without_range(RunConfig) == []


def test_recipe_hash_ignores_where_and_how_a_run_executes():
    base = load_config()
    deployment = load_config(None, {"pipeline.shards": 2, "pipeline.parallelism": 1, "name": "other",
                                    "kubernetes.stages.update.gpus": 2, "train.num_processes": 2,
                                    "train.micro_batch_size": 24, "sampling.batch_size": 4})
    assert deployment.recipe_sha256() == base.recipe_sha256() and deployment.sha256() != base.sha256()
    assert load_config(None, {"train.learning_rate": 2e-3}).recipe_sha256() != base.recipe_sha256()
    assert load_config(None, {"seed": 3}).recipe_sha256() != base.recipe_sha256()


def test_default_prompts_are_the_toy_worlds_captions():
    from dgrpo.toyworld.data import CAPTIONS

    cfg = load_config()
    assert cfg.eval.prompts == CAPTIONS and cfg.sampling.prompts == CAPTIONS[:6]


def test_a_config_recorded_before_the_restructure_still_loads():
    """A run's config.json written by dgrpo at f5ee6c2 (before the config became a package): same values."""
    import json
    from pathlib import Path

    from dgrpo.config import config_from_json

    text = (Path(__file__).parent / "fixtures" / "config-f5ee6c2.json").read_text()
    cfg = config_from_json(text)
    old = json.loads(text)
    new = cfg.to_dict()
    # fields added since, at the values that keep the old meaning (kl_form: the KL was divided by the noise variance)
    added = {"train": {"detail_baseline": "group", "kl_form": "gaussian", "structure_share": 0.8,
                       "profile_groups": 12}, "cluster": {"k_selection": "eigengap"}}
    renamed = {"train": {"structure_steps": "sa_steps"}}
    recast = {"cluster": {"k": None, "kernel_width": None}}  # k None meant the eigengap, kernel_width None the
                                                             # width heuristic: now k_selection and width_heuristic

    def recorded(section: str, values: dict) -> dict:
        return {renamed.get(section, {}).get(k, k): recast.get(section, {}).get(k, v) for k, v in values.items()
                if k not in added.get(section, {})}

    compared = [k for k in old if k not in ("pipeline", "kubernetes")]
    assert {k: recorded(k, new[k]) if isinstance(new[k], dict) else new[k] for k in compared} == {
        k: old[k] for k in compared}
    assert all(new[section][k] == v for section, fields in added.items() for k, v in fields.items())
    assert cfg.kubernetes.resolve("update").gpus == old["kubernetes"]["stages"]["update"]["gpus"]
    assert cfg.pipeline.swaps() == {}


# --- nothing set is silently ignored (issue 28) ---------------------------------------------------------------------

def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    """YAML keeps the second copy silently: an edit to the first would be ignored (the run trained the second)."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 0.001\n  clip_range: 0.01\n  learning_rate: 0.5\n")
    with pytest.raises(ConfigError, match=r"c.yaml': key 'train.learning_rate' is given twice, on lines 2 and 4"):
        load_config(path)
    path.write_text("rounds: 3\nrounds: 4\n")
    with pytest.raises(ConfigError, match=r"key 'rounds' is given twice, on lines 1 and 2"):
        load_config(path)


def test_a_merge_key_may_be_overridden_as_yaml_intends(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("kubernetes:\n  stages:\n    rollout: &gpu {gpus: 1, shm_size: 8Gi}\n"
                    "    update:\n      <<: *gpu\n      gpus: 2\n")
    cfg = load_config(path)
    assert (cfg.kubernetes.stages["update"].gpus, cfg.kubernetes.stages["update"].shm_size) == (2, "8Gi")


def test_setting_a_section_to_a_mapping_merges_into_it():
    """`--set train={learning_rate: ...}` on the SD3.5 preset once reset batch size, processes, fp16 and EMA."""
    preset = "configs/sd35m-flowgrpo.yaml"
    whole = load_config(preset, {"train": {"learning_rate": 1e-5}})
    dotted = load_config(preset, {"train.learning_rate": 1e-5})
    untouched = load_config(preset)
    assert whole.to_dict() == dotted.to_dict() and whole.recipe_sha256() == dotted.recipe_sha256()
    assert whole.train.learning_rate == 1e-5 != untouched.train.learning_rate
    assert {k: v for k, v in whole.to_dict()["train"].items() if k != "learning_rate"} == {
        k: v for k, v in untouched.to_dict()["train"].items() if k != "learning_rate"}


@pytest.mark.parametrize("overrides", [{"rounds": 2, "rounds.x": 1}, {"rounds.x": 1, "rounds": 2}])
def test_an_override_under_a_single_value_is_a_config_error(overrides):
    with pytest.raises(ConfigError, match=r"config overrides 'rounds' and 'rounds.x' conflict: 'rounds' is set to a "
                                          r"single value \(2\), so it has no field 'x'"):
        load_config(None, overrides)
    with pytest.raises(ConfigError, match=r"config field 'rounds.x': 'rounds' holds a single value \(10\)"):
        load_config(toy_preset("toy"), {"rounds.x": 1})


_HEX64 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.mark.parametrize(("overrides", "message"), [
    # names the old check missed (issue 28: the password reached the compiled YAML ten times)
    ({"kubernetes.defaults.env": {"PGPASSWORD": "hunter2"}}, r"'kubernetes.defaults.env.PGPASSWORD': its name says"),
    ({"kubernetes.stages.update.env": {"WANDB_KEY": "0123456789abcdef0123456789abcdef01234567"}},
     r"'kubernetes.stages.update.env.WANDB_KEY': its name says"),
    ({"kubernetes.defaults.env": {"OPENAI_KEY": "notarealkey0123456789"}}, r"env.OPENAI_KEY': its name says"),
    ({"reward.options": {"db": {"mysql_pwd": "s3cr3t-passw0rd-here"}}}, r"'reward.options.db.mysql_pwd': its name"),
    # values, whatever the name and wherever in the config
    ({"kubernetes.defaults.env": {"LOGIN": "sk-proj-" + "Ab3dE5gH7jK9mN1pQ3sT5vW7yZ9b"}}, r"an OpenAI or Anthropic"),
    ({"reward.options": {"account": "ghp_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bD1fH3kL5"}},
     r"options.account': looks like a GitHub"),
    ({"cluster.embedder_options": {"hub": "hf_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bD1fH3k"}}, r"a Hugging Face token"),
    ({"kubernetes.stages.rollout.node_selector": {"pool": "AKIAIOSFODNN7EXAMPLE"}}, r"an AWS access key id"),
    ({"model.pretrained": "postgres://app:hunter2@db.internal:5432/weights"}, r"'model.pretrained': looks like a "
                                                                              r"password in a URI"),
    ({"kubernetes.defaults.env": {"NOTIFY": "xoxb-1234567890-abcdefghijk"}}, r"a Slack token"),
    ({"kubernetes.defaults.env": {"AWS_X": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY"}}, r"a high-entropy token"),
    ({"name": "run-Zq3xT9vLp2WmR7nK4sYb8cJd"}, r"'name': looks like a high-entropy token"),
    ({"model.pretrained": "s3://weights/Zq3xT9vLp2WmR7nK4sYb8cJd/sd35"}, r"'model.pretrained': looks like a high-"),
])
def test_secrets_are_found_by_value_and_by_name_anywhere(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_digests_revisions_and_model_names_are_not_taken_for_secrets():
    """The config legitimately holds sha256 digests, image digests, git revisions and mixed-case model ids."""
    cfg = load_config(None, {
        "pipeline.stages.reward": {"image": f"registry.example:5000/team/reward@sha256:{_HEX64}",
                                   "command": ["python", "-m", "reward", "--revision",
                                               "fb4c9277c81cc6d6a16c3635a8d759901da5956b"]},
        "model.pretrained": "stabilityai/stable-diffusion-3.5-medium",
        "cluster.embedder_options": {"model": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "digest": f"sha256:{_HEX64}",
                                     "class": "CLIPTextModelWithProjection", "prompt_key": "caption"},
        "kubernetes.defaults.env": {"HF_HUB_REVISION": _HEX64, "MODEL_URL": "https://hub.example:443/m@main",
                                    "TOKENIZERS_PARALLELISM": "false",
                                    "RUN_UUID": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
                                    "CHECKPOINT": "/data/Models/SD35/checkpoint1200/unet",
                                    # a temporary directory's random name inside a path (mktemp -d) is a name
                                    "WORK": "/tmp/tmp.EHkRC5EcwJ/main/examples/custom_reward/component.yaml"}})
    assert cfg.pipeline.stages["reward"].image.endswith(_HEX64)


def test_dgrpo_variables_given_to_the_pods_are_checked_at_load():
    """What the pods would refuse when they open the store is refused at load, naming the field."""
    with pytest.raises(ConfigError, match=r"'kubernetes.stages.update.env.DGRPO_S3_MAX_ATTEMPT': DGRPO_S3_MAX_ATTEMPT "
                                          r"is not a variable dgrpo reads \(did you mean DGRPO_S3_MAX_ATTEMPTS\?\)"):
        load_config(None, {"kubernetes.stages.update.env": {"DGRPO_S3_MAX_ATTEMPT": "5"}})
    with pytest.raises(ConfigError, match=r"'kubernetes.fused.config_maps\[0\].env.endpoint': DGRPO_S3_ENDPOINT is"):
        load_config(None, {"kubernetes.fused.config_maps": [{"config_map": "s3", "env": {
            "endpoint": "DGRPO_S3_ENDPOINT"}}]})
    cfg = load_config(None, {"kubernetes.defaults.env": {"DGRPO_S3_MAX_ATTEMPTS": "5", "OTHER_TOOL_X": "1"},
                             "kubernetes.defaults.config_maps": [{"config_map": "dgrpo-s3", "env": {
                                 "endpoint": "DGRPO_S3_ENDPOINT_URL"}}]})
    assert cfg.kubernetes.defaults.env["DGRPO_S3_MAX_ATTEMPTS"] == "5"


def test_structure_steps_is_a_count_or_auto():
    assert small_config(**{"train.structure_steps": "auto"}).train.structure_steps == "auto"
    assert small_config(**{"train.structure_steps": "2"}).train.structure_steps == 2
    with pytest.raises(ConfigError, match=r"'train.structure_steps': must be one of auto, got 'automatic'"):
        small_config(**{"train.structure_steps": "automatic"})
    with pytest.raises(ConfigError, match=r"'train.structure_steps': must be > 0, got 0"):
        small_config(**{"train.structure_steps": 0})
