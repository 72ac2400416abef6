"""The experiment lab from an installed wheel, not a checkout: the wheel holds `dgrpo_lab` and the toy presets as
package data (one copy, `src/dgrpo/assets/configs/`), and `dgrpo experiment --dry-run`, run from a directory outside
any checkout with only the unpacked wheel on the path, reads every arm's preset from inside the installed package."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from dgrpo.toyworld.presets import PRESETS_DIR

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "src", "components", "pipelines", "lab")
"""What setuptools builds the wheel from (pyproject's package-dir), copied so the build leaves the checkout alone."""
RUN = """
import sys

import dgrpo, dgrpo_lab, dgrpo_pipelines
from dgrpo_pipelines.main import main

for module in (dgrpo, dgrpo_lab, dgrpo_pipelines):
    assert module.__file__.startswith(sys.argv[1]), f"{module.__name__} imported from {module.__file__}"
sys.exit(main(["experiment", "--dry-run", "--seeds", "all", "--all-arms"]))
"""


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=180)
    (wheel,) = (tmp_path / "dist").glob("dgrpo-*.whl")
    return wheel


def test_an_installed_wheel_runs_the_experiment_lab_with_its_presets_without_a_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    shipped = sorted(p.name for p in PRESETS_DIR.glob("*.yaml"))
    assert "toy-flowgrpo.yaml" in shipped and "toy.yaml" in shipped
    assert sorted(n.removeprefix("dgrpo/assets/configs/") for n in names
                  if n.startswith("dgrpo/assets/configs/")) == shipped
    assert {"dgrpo_lab/run.py", "dgrpo_lab/goals.py", "dgrpo/toyworld/presets.py"} <= set(names)
    assert "dgrpo/toyworld/experiment.py" not in names  # the lab is not part of the toy plug-in
    elsewhere = tmp_path / "elsewhere"  # no configs/ here, and no checkout above it
    elsewhere.mkdir()
    site = tmp_path / "site"
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", RUN, str(site)], cwd=elsewhere, env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "8 arms x 8 seeds (tuning 0 1 2; evaluation 3 4 5 6 7), 40 rounds each", lines
    presets = {line.split()[0]: Path(line.split()[1]) for line in lines[1:]}
    assert presets["flowgrpo"] == site / "dgrpo" / "assets" / "configs" / "toy-flowgrpo.yaml"
    assert len(presets) == 8 and all(p.parent == site / "dgrpo" / "assets" / "configs" and p.is_file()
                                     for p in presets.values())
