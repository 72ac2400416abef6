import pytest

from dgrpo.config import ConfigError, load_config


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
    for path in Path(__file__).parents[1].glob("configs/*.yaml"):
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


def test_comparison_presets_differ_only_in_cluster_and_regulariser():
    for family in ("toy", "sd35m"):
        arms = [load_config(f"configs/{family}-{arm}.yaml").to_dict() for arm in ("flowgrpo", "sareg", "diversegrpo")]
        for arm in arms:
            for key in ("name", "cluster"):
                arm.pop(key)
            for key in ("regularizer", "sa_lambda", "sa_steps"):
                arm["train"].pop(key)
        assert arms[0] == arms[1] == arms[2]
