"""Compile time of every shipped preset (goal: `dgrpo compile` at most 10 s each on this machine), as a user
sees it: a fresh `dgrpo compile` process, imports included (wall and CPU seconds: on a shared machine the wall
time also counts waiting for a core), next to the bare compile inside one process.

Also prints each segment IR's size and, for the sizes the docs' Workflow model uses, the tasks a segment executes.
    python scripts/bench_compile.py [--presets configs/sd35m-pickscore.yaml ...] [--smoke: the toy preset only]
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 10.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from dgrpo.toyworld.presets import PRESETS_DIR

    shipped = sorted([*(ROOT / "configs").glob("*.yaml"), *PRESETS_DIR.glob("*.yaml")])
    parser.add_argument("--presets", nargs="*", type=Path, default=shipped)
    parser.add_argument("--smoke", action="store_true",
                        help="the toy preset only: the same code paths in seconds (tests/test_bench_smoke.py)")
    args = parser.parse_args()
    if args.smoke:
        args.presets = [PRESETS_DIR / "toy.yaml"]
    from dgrpo_pipelines.training import compile_pipeline

    from dgrpo.config import load_config
    from dgrpo.runtime.plan import max_tasks_per_run

    dgrpo = Path(sys.executable).parent / "dgrpo"
    print(f"{'preset':<26} {'dgrpo compile s':>15} {'/ goal':>7} {'its CPU s':>9} {'compile only s':>14} "
          f"{'IR bytes':>9} {'tasks/run':>9}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            out = Path(tmp) / f"{preset.stem}.yaml"
            start, cpu0 = time.perf_counter(), _children_cpu()
            subprocess.run([str(dgrpo), "compile", "-c", str(preset), "-o", str(out)], check=True,
                           capture_output=True)
            cli, cpu = time.perf_counter() - start, _children_cpu() - cpu0
            config = load_config(preset)
            start = time.perf_counter()
            compile_pipeline(config, out)
            bare = time.perf_counter() - start
            worst = max(worst, cli)
            print(f"{preset.stem:<26} {cli:15.2f} {cli / GOAL_S:7.2f} {cpu:9.2f} {bare:14.2f} "
                  f"{out.stat().st_size:9d} {max_tasks_per_run(config):9d}")
    print(f"slowest `dgrpo compile`: {worst:.2f} s = {worst / GOAL_S:.2f} x the {GOAL_S:.0f} s goal "
          f"(load average {' '.join(f'{x:.1f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
