"""Where the toy world's presets live: package data (`dgrpo/assets/configs/`, beside the toy checkpoint), so an
installed wheel trains them and runs the experiment without a checkout. The repository's `configs/` keeps the
production presets (SD3.5-M, FLUX.1)."""

from pathlib import Path

PRESETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "configs"
"""toy.yaml (what `dgrpo run` trains without --config) and the toy-*.yaml arms, built on toy-flowgrpo.yaml."""


def toy_preset(name: str) -> Path:
    """The shipped toy preset `name` ("toy-sareg" or "toy-sareg.yaml"); a name that ships nothing is an error
    listing those that do."""
    path = PRESETS_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no toy preset {name!r} in {PRESETS_DIR} (shipped: {shipped})")
    return path
