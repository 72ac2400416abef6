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
# change a recipe updates these pins in its own commit, saying why. Re-pinned when train.profile_prompts (2) became
# train.profile_groups (12), a field of the structure profile (issue 27): the recipe holds every field. Re-pinned
# toy-diversegrpo-target when it started measuring a fixed-noise probe (probe_prompts 6, probe_images 16) acted on
# raw (smoothing 1): a different recipe by intent (issue 27, docs/algorithms.md "Diversity target").
PINNED_RECIPE_SHA256 = {
    None: "8f28101ce2673ed3a3e64468b817216ab7a2aa43e86217507e32b05fcf20daa8",
    "toy-bonus": "1ac4d54d629684f1c9ce43f635623715725a216e3a8c88c9627a33754e43b1a5",
    "toy-diversegrpo-paper": "5dfdf05675c1060ef96709033895f9175521a2082ebf35ba855de6adfdc08531",
    "toy-diversegrpo-target": "5547217900feed1d1abcb337642ef737cf89a12f352a4c65f8de67167029efaa",
    "toy-diversegrpo": "32b0f98f95bb7792afb3e459c34644f23fe55669cd300770823179e945eac3fd",
    "toy-drift": "69c6b48bef565332d45333c557287fedd7673ee7991198b53f9c73d4dafb8b41",
    "toy-flowgrpo": "64e7b9b6cbb62580e5e17ee2b322ee84f3f19895490589fb0a016d352c981860",
    "toy-gardo": "1ae61296b50037e2fd3d19fc4e2eb118c6634a84649f2e63684a35a5934b1fa2",
    "toy-grpo-guard": "8cff080d40aee5c481a04ff4d3e16e9c049fa7cdab3f03d8fd97a29a47cd50e0",
    "toy-progrpo": "59a5ec297ed53c38cf542f8e7f104b670e38111719088a0658f5dbaf82a59528",
    "toy-sareg": "c9caf37f6542bca25aa2d4e448059e3fefb274224f4d5b9cc699c0d4ff90b7c6",
    "toy": "64e7b9b6cbb62580e5e17ee2b322ee84f3f19895490589fb0a016d352c981860",
}


def test_every_shipped_toy_preset_is_pinned():
    assert {p.stem for p in PRESETS_DIR.glob("*.yaml")} == set(PINNED_RECIPE_SHA256) - {None}


@pytest.mark.parametrize("preset", list(PINNED_RECIPE_SHA256), ids=lambda p: p or "<empty yaml>")
def test_the_recipe_hashes_are_those_before_the_move(preset):
    cfg = load_config(None if preset is None else PRESETS_DIR / f"{preset}.yaml")
    assert cfg.recipe_sha256() == PINNED_RECIPE_SHA256[preset]


def test_the_defaults_are_the_toy_modules():
    cfg = load_config(None)
    assert defaults.__name__ == TOY_WORLD
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
