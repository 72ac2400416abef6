"""Build and push the dgrpo images, then write the image references the pipeline compiler reads.

    python scripts/images.py [--registry REG] [--output build/images.json] [--no-push]

The base image is built from the repository root, then one image per stage on top of it, all tagged with the git
revision (`<rev>`, or `<rev>-dirty` with uncommitted changes). After pushing, the references are pinned by digest.
The output file maps each stage to its reference; `DGRPO_IMAGES_FILE=build/images.json dgrpo compile ...` (what
`make compile` does when the file exists) puts them into the pipeline. Without a reachable Docker engine the
script says so and exits 0 without writing anything, so `make images` is safe to run anywhere.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from dgrpo.contracts.stages import STAGE_NAMES

ROOT = Path(__file__).resolve().parents[1]


def git_revision() -> str:
    rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.strip()
    return f"{rev}-dirty" if dirty else rev


def docker_available() -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        result = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                                text=True, timeout=20)
    except FileNotFoundError:
        return "no docker command on PATH"
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if result.returncode != 0:
        return (result.stderr.strip().splitlines() or ["docker info failed"])[-1]
    return None


def docker(*args: str) -> str:
    print("+ docker " + " ".join(args), flush=True)
    return subprocess.run(["docker", *args], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()


def build_all(registry: str, tag: str, push: bool) -> dict[str, str]:
    from dgrpo import __version__

    base = f"{registry}/dgrpo-base:{tag}"
    docker("build", "--file", str(ROOT / "images/base/Dockerfile"), "--tag", base,
           "--build-arg", f"DGRPO_CODE_VERSION={__version__}+g{tag}", str(ROOT))
    if push:
        docker("push", base)
    refs = {}
    for stage in STAGE_NAMES:
        ref = f"{registry}/dgrpo-{stage}:{tag}"
        docker("build", "--tag", ref, "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"STAGE={stage}",
               "--build-arg", f"DGRPO_IMAGE={ref}", str(ROOT / "images" / "stage"))
        if push:
            docker("push", ref)
            digests = json.loads(docker("image", "inspect", "--format", "{{json .RepoDigests}}", ref) or "[]")
            pinned = next((d for d in digests if d.startswith(f"{registry}/dgrpo-{stage}@")), None)
            ref = f"{ref}@{pinned.split('@', 1)[1]}" if pinned else ref
        refs[stage] = ref
    return refs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=os.environ.get("DGRPO_IMAGE_REGISTRY", "ghcr.io/dgrpo"),
                        help="registry/namespace to tag and push to (default: $DGRPO_IMAGE_REGISTRY or ghcr.io/dgrpo)")
    parser.add_argument("--output", type=Path, default=ROOT / "build" / "images.json",
                        help="where to write the stage -> image reference map")
    parser.add_argument("--no-push", action="store_true", help="build only (the references stay tags)")
    args = parser.parse_args()

    reason = docker_available()
    if reason:
        print(f"make images: skipped, no Docker engine here ({reason}); nothing built, {args.output} not written.")
        return 0
    refs = build_all(args.registry.rstrip("/"), git_revision(), push=not args.no_push)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(json.dumps(refs, indent=2, sort_keys=True) + "\n")
    tmp.replace(args.output)
    print(f"wrote {args.output}:")
    for stage, ref in refs.items():
        print(f"  {stage:<9} {ref}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
