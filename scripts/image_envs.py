"""Each stage image's Python environment as a virtual environment, built the way images/ builds the images.

    python scripts/image_envs.py [--root build/image-envs] [STAGE ...]

No Docker engine is needed: `base` gets images/base/requirements.txt, kfp-runtime.txt without dependencies and
this checkout's dgrpo without dependencies (as images/base/Dockerfile does); each stage venv sees the base venv's
packages (a .pth file: the image layer below) and installs images/stage/requirements-<stage>.txt on top under the
base pins as constraints (as images/stage/Dockerfile does). A venv is rebuilt only when the requirement files it
was built from change; dgrpo itself is reinstalled every time (it is this checkout). Differences from the images:
the host's Python (3.11 here, 3.12 in the images) and no CUDA runtime.
"""

import argparse
import hashlib
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
BASE_FILES = (IMAGES / "base" / "requirements.txt", IMAGES / "base" / "kfp-runtime.txt")


def _digest(*files: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
                   check=True)


def _site_packages(venv: Path) -> Path:
    rel = Path(sysconfig.get_path("purelib", vars={"base": ".", "platbase": "."}))
    return venv / rel


def _fresh_venv(venv: Path, digest: str) -> bool:
    """Create `venv` unless it exists and was built from `digest`; True when it must be (re)filled."""
    stamp = venv / ".dgrpo-requirements"
    if stamp.exists() and stamp.read_text() == digest:
        return False
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)  # the interpreter, not a venv's
    return True


def _done(venv: Path, digest: str) -> None:
    (venv / ".dgrpo-requirements").write_text(digest)


def build_base(root: Path) -> Path:
    venv = root / "base"
    digest = _digest(*BASE_FILES)
    python = venv / "bin" / "python"
    if _fresh_venv(venv, digest):
        _pip(python, "-r", str(BASE_FILES[0]))
        _pip(python, "--no-deps", "-r", str(BASE_FILES[1]))
        _done(venv, digest)
    _pip(python, "--no-deps", "--force-reinstall", str(ROOT))  # this checkout's code, not an editable link
    return python


def build_stage(root: Path, stage: str) -> Path:
    """The stage's venv on top of the base venv (`build_base` first); returns its python."""
    requirements = IMAGES / "stage" / f"requirements-{stage}.txt"
    if not requirements.exists():
        raise FileNotFoundError(f"stage {stage!r}: no {requirements.relative_to(ROOT)}")
    venv = root / stage
    python = venv / "bin" / "python"
    if _fresh_venv(venv, _digest(*BASE_FILES, requirements)):
        (_site_packages(venv) / "_dgrpo_base_image.pth").write_text(f"{_site_packages(root / 'base')}\n")
        _pip(python, "-c", str(BASE_FILES[0]), "-r", str(requirements))
        _done(venv, _digest(*BASE_FILES, requirements))
    return python


def main() -> int:
    from dgrpo.contracts.stages import STAGE_NAMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="*", default=list(STAGE_NAMES), help="stages (default: all)")
    parser.add_argument("--root", type=Path, default=ROOT / "build" / "image-envs")
    args = parser.parse_args()
    print(f"base: {build_base(args.root)}", flush=True)
    control = args.root / "control"  # the control image has the base's packages only (torch as a CPU build)
    if not control.is_symlink():
        shutil.rmtree(control, ignore_errors=True)
        control.symlink_to("base")
    print(f"control: {control / 'bin' / 'python'} (the base environment)", flush=True)
    for stage in args.stages:
        print(f"{stage}: {build_stage(args.root, stage)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
