"""The toy world's defaults and registry rows live in one toy module, which the core names once (issue 26, item 5)."""

import io
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from dgrpo.config import load_config
from dgrpo.config.recipe import TOY_WORLD
from dgrpo.embedders import EMBEDDERS
from dgrpo.metrics import MODE_CLASSIFIERS
from dgrpo.models import POLICIES
from dgrpo.registry import Registry, RegistryError, import_path
from dgrpo.rewards import REWARDS
from dgrpo.toyworld import defaults
from dgrpo.toyworld.data import CAPTIONS
from dgrpo.toyworld.presets import PRESETS_DIR

SRC = Path(__file__).resolve().parents[1] / "src" / "dgrpo"
THE_ONE_PLACE = ("config/recipe.py", 'TOY_WORLD = "dgrpo.toyworld.defaults"')

# Pinned on the code before the toy's defaults moved into dgrpo.toyworld.defaults (main abf19f5): the move must not
# change any recipe, so the default config and every shipped toy preset keep their recipe hash. A change that means to
# change a recipe updates these pins in its own commit, saying why.
PINNED_RECIPE_SHA256 = {
    None: "f1d8f15063e56007bb2228033328ed820acddf780358f97272bf84f633486a40",
    "toy-bonus": "d66d04afae8088bea5bfbc990ca0353359b486820a99396b35f0335f30a40baa",
    "toy-diversegrpo-paper": "e7ca4ec6f610ddef08cf5ef03863e0e628e79b5000c0e37e1a6ef80e07c8fa3f",
    "toy-diversegrpo-target": "533ca357a309099bc1289e74028927727664671b6b8e31366919734c37b419a7",
    "toy-diversegrpo": "2d4a2157ec606d7e8555d6636891be223c3a9b065dec60944bfb3a9ed228257f",
    "toy-drift": "37cb867f69240b774d7037e8035a4b376affc9644ad78493da66246ee537d620",
    "toy-flowgrpo": "8f3b508ba84deff3e6f75da0ca327ab8c1cdb9d8c6b5b0b2f77f9ea1e39f9314",
    "toy-gardo": "f9546acf93b2c48b11f22b641f7fb44706b971023cc7214751c08ebe4ca345dc",
    "toy-grpo-guard": "49ea55e34b5c292238ac589928ae58c0cb8751ef26ee433b36b2b54c11d58685",
    "toy-progrpo": "af8e6f146b4fc31f8a68312ff5e7f1d2cd7ffff5ac9c400343103276083e7d5f",
    "toy-sareg": "2647344fee21dee9f3d91a0937bbb899a0cde51f9d814ffcc7b4dab71b7752e1",
    "toy": "8f3b508ba84deff3e6f75da0ca327ab8c1cdb9d8c6b5b0b2f77f9ea1e39f9314",
}


def test_every_shipped_toy_preset_is_pinned():
    assert {p.stem for p in PRESETS_DIR.glob("*.yaml")} == set(PINNED_RECIPE_SHA256) - {None}


@pytest.mark.parametrize("preset", list(PINNED_RECIPE_SHA256), ids=lambda p: p or "<empty yaml>")
def test_the_recipe_hashes_are_those_before_the_move(preset):
    cfg = load_config(None if preset is None else PRESETS_DIR / f"{preset}.yaml")
    assert cfg.recipe_sha256() == PINNED_RECIPE_SHA256[preset]


def test_the_defaults_are_the_toy_modules():
    cfg = load_config(None)
    assert TOY_WORLD == defaults.__name__
    assert cfg.sampling.prompts == defaults.TRAIN_CAPTIONS == CAPTIONS[:6]
    assert cfg.eval.prompts == CAPTIONS and [p for p in CAPTIONS if p not in cfg.sampling.prompts] == \
        defaults.HELD_OUT_CAPTIONS
    for dotted, value in defaults.CONFIG_DEFAULTS.items():
        section, name = dotted.split(".")
        assert getattr(getattr(cfg, section), name) == value, dotted
    assert cfg.sampling.prompts is not load_config(None).sampling.prompts  # a fresh list per config


def test_each_registry_gets_the_toy_row_from_the_toy_module():
    registries = {r.config_field: r for r in (POLICIES, REWARDS, EMBEDDERS, MODE_CLASSIFIERS)}
    assert set(defaults.REGISTRY_ROWS) == set(registries)
    for field, rows in defaults.REGISTRY_ROWS.items():
        for name, path in rows.items():
            assert name in registries[field].names()
            assert registries[field].get(name) is import_path(path, "test")


def test_contributed_rows_are_read_on_first_lookup_and_may_not_clash(tmp_path, monkeypatch):
    (tmp_path / "acme_world.py").write_text('REGISTRY_ROWS = {"widget.name": {"acme": "json:dumps"}}\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    import json

    registry = Registry("widget", "widget.name", {"loads": "json:loads"}, contributors=("acme_world",))
    assert "acme_world" not in sys.modules
    assert registry.names() == ["acme", "loads"] and registry.get("acme") is json.dumps
    clash = Registry("widget", "widget.name", {"acme": "json:loads"}, contributors=("acme_world",))
    with pytest.raises(RegistryError, match="'acme' of 'acme_world' is already a built-in"):
        clash.names()


def test_importing_the_core_imports_no_toy_code():
    code = ("import sys, dgrpo.config, dgrpo.models, dgrpo.rewards, dgrpo.embedders, dgrpo.metrics; "
            "print(sorted(m for m in sys.modules if m.startswith('dgrpo.toyworld')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def _core_files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if (SRC / "toyworld") not in p.parents)


def test_the_core_names_the_toy_world_in_one_place():
    """Outside src/dgrpo/toyworld, "toyworld" appears on one line only (code, strings, comments and docstrings alike):
    the `TOY_WORLD` path. Prose may speak of "the toy world"; an import of it, a path into it or a copy of its rows
    would name it. And no code spells the toy's registry name "toy": its defaults and rows come from `TOY_WORLD`."""
    named, toy_literals = [], []
    for path in _core_files():
        text, rel = path.read_text(), path.relative_to(SRC).as_posix()
        named += [(rel, line.strip()) for line in text.splitlines() if "toyworld" in line]
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.STRING and tok.string.strip("\"'") == "toy":
                toy_literals.append((rel, tok.start[0]))
    assert named == [THE_ONE_PLACE]
    assert toy_literals == []
