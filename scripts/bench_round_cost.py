"""What a round costs in task launches: the same toy rounds through kfp.local (one process per task, as a cluster
runs one pod per task) and in process (no launches), side by side in one run. Identical adapters; the difference
divided by the tasks kfp.local launched is the overhead of one task launch.

    python scripts/bench_round_cost.py [--rounds 4] [--rounds-per-run 2]
"""

import argparse
import tempfile
import time
from pathlib import Path

from dgrpo_pipelines.local import run_pipeline

from dgrpo.config import load_config
from dgrpo.runtime.plan import segment_tasks, tasks_per_round
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import LocalStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs" / "toy.yaml")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rounds-per-run", type=int, default=2)
    args = parser.parse_args()
    config = load_config(args.config, {"rounds": args.rounds, "pipeline.rounds_per_run": args.rounds_per_run})
    wall, adapters = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("inprocess", "kfp"):
            store = LocalStore(Path(tmp) / engine / "store")
            start = time.perf_counter()
            run_pipeline(StageContext(config, store, "bench"), str(store.root), Path(tmp) / engine / "work", engine)
            wall[engine] = time.perf_counter() - start
            adapters[engine] = store.get_json(f"runs/bench/commits/r{args.rounds - 1:06d}.json")["adapter"]["sha256"]
    starts = range(0, args.rounds, args.rounds_per_run)
    tasks = sum(segment_tasks(config, s) for s in starts)
    per_task = (wall["kfp"] - wall["inprocess"]) / tasks
    print(f"{args.rounds} toy rounds in {len(starts)} segments, {tasks} kfp.local tasks; identical adapters: "
          f"{adapters['kfp'] == adapters['inprocess']}")
    print(f"  in process {wall['inprocess']:7.1f} s   kfp.local {wall['kfp']:7.1f} s   ratio "
          f"{wall['kfp'] / wall['inprocess']:.2f}")
    print(f"  launch overhead {per_task:.2f} s per task = {1 - wall['inprocess'] / wall['kfp']:.0%} of kfp.local's "
          f"wall time; {per_task * tasks_per_round(config):.1f} s per round of {tasks_per_round(config)} tasks")


if __name__ == "__main__":
    main()
