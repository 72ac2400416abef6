"""What a round costs in task launches: the same toy rounds through kfp.local (one process per task, as a cluster
runs one pod per task) and in process (no launches), side by side in one run, with identical adapters. The
difference divided by the tasks kfp.local launched is the overhead of one task launch, in wall seconds and in CPU
seconds (on a shared machine the wall time also counts waiting for a core; the CPU time does not).

    python scripts/bench_round_cost.py [--rounds 4] [--rounds-per-run 2]
"""

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from dgrpo_pipelines.local import run_pipeline

from dgrpo.config import load_config
from dgrpo.runtime.plan import segment_tasks, tasks_per_round
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import LocalStore


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (kfp.local's task processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs" / "toy.yaml")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rounds-per-run", type=int, default=2)
    args = parser.parse_args()
    config = load_config(args.config, {"rounds": args.rounds, "pipeline.rounds_per_run": args.rounds_per_run})
    wall, cpu, adapters = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("inprocess", "kfp"):
            store = LocalStore(Path(tmp) / engine / "store")
            start, cpu0 = time.perf_counter(), _cpu()
            run_pipeline(StageContext(config, store, "bench"), str(store.root), Path(tmp) / engine / "work", engine)
            wall[engine], cpu[engine] = time.perf_counter() - start, _cpu() - cpu0
            adapters[engine] = store.get_json(f"runs/bench/commits/r{args.rounds - 1:06d}.json")["adapter"]["sha256"]
    starts = range(0, args.rounds, args.rounds_per_run)
    tasks = sum(segment_tasks(config, s) for s in starts)
    print(f"{args.rounds} toy rounds in {len(starts)} segments, {tasks} kfp.local tasks; identical adapters: "
          f"{adapters['kfp'] == adapters['inprocess']}; load average {os.getloadavg()[0]:.1f}")
    for what, m in (("wall", wall), ("CPU", cpu)):
        per_task = (m["kfp"] - m["inprocess"]) / tasks
        print(f"  {what:4} s: in process {m['inprocess']:7.1f}   kfp.local {m['kfp']:7.1f}   ratio "
              f"{m['kfp'] / m['inprocess']:5.2f}   launch overhead {per_task:5.2f} s per task = "
              f"{1 - m['inprocess'] / m['kfp']:.0%} of kfp.local's; {per_task * tasks_per_round(config):.0f} s "
              f"per round of {tasks_per_round(config)} tasks")


if __name__ == "__main__":
    main()
