"""Build and push the dgrpo images, then write the image references the pipeline compiler reads.

    python scripts/images.py [--registry REG] [--output build/images.json] [--no-push]

The base image is built from the repository root, then one image per stage on top of it and the small CPU image of
the bookkeeping tasks (`control`), all tagged with the git revision (`<rev>`, or `<rev>-dirty` with uncommitted
changes). After pushing, the references are pinned by digest. The output file maps each image key to its reference,
and the script prints the same map as the `kubernetes.images` section of a config, which `dgrpo compile` and
`dgrpo submit` both use (`DGRPO_IMAGES_FILE=build/images.json` still works for `make compile`). Without a reachable
Docker engine, or when a build fails, the script exits non-zero and writes nothing: `make images` fails when it
built nothing.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from dgrpo.config.deployment import IMAGE_KEYS
from dgrpo.contracts.stages import STAGE_NAMES
from dgrpo.files import atomic_write_text

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
    for key in IMAGE_KEYS:
        ref = f"{registry}/dgrpo-{key}:{tag}"
        if key in STAGE_NAMES:
            docker("build", "--tag", ref, "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"STAGE={key}",
                   "--build-arg", f"DGRPO_IMAGE={ref}", str(ROOT / "images" / "stage"))
        else:
            docker("build", "--file", str(ROOT / "images" / key / "Dockerfile"), "--tag", ref, "--build-arg",
                   f"DGRPO_CODE_VERSION={__version__}+g{tag}", "--build-arg", f"DGRPO_IMAGE={ref}", str(ROOT))
        if push:
            docker("push", ref)
            digests = json.loads(docker("image", "inspect", "--format", "{{json .RepoDigests}}", ref) or "[]")
            pinned = next((d for d in digests if d.startswith(f"{registry}/dgrpo-{key}@")), None)
            ref = f"{ref}@{pinned.split('@', 1)[1]}" if pinned else ref
        refs[key] = ref
    return refs


def config_snippet(refs: dict[str, str]) -> str:
    """The references as the `kubernetes.images` section of a dgrpo config."""
    return "kubernetes:\n  images:\n" + "".join(f"    {key}: {ref}\n" for key, ref in refs.items())


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
        print(f"make images: no Docker engine here ({reason}); nothing built, {args.output} not written",
              file=sys.stderr)
        return 1
    try:
        refs = build_all(args.registry.rstrip("/"), git_revision(), push=not args.no_push)
    except subprocess.CalledProcessError as exc:
        print(f"make images: `{' '.join(exc.cmd)}` failed (exit {exc.returncode}); {args.output} not written",
              file=sys.stderr)
        return 1
    if set(refs) != set(IMAGE_KEYS):
        print(f"make images: built {sorted(refs)}, not every image {list(IMAGE_KEYS)}", file=sys.stderr)
        return 1
    atomic_write_text(args.output, json.dumps(refs, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.output}; put these references into your config (dgrpo compile and submit use them):")
    print(config_snippet(refs), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
