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
