"""Rollout cost: SDE sampling with log-probs versus plain deterministic sampling, side by side in one run.

Prints the ratio (goal: at most 1.05x); both samplers run the same policy, steps, batch and seeds.
"""

import argparse
import time

import torch

from dgrpo.config import ModelConfig
from dgrpo.models import load_policy
from dgrpo.trajectories import sample_ode, sample_sde


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    policy = load_policy(ModelConfig())
    prompts = ["a red square", "a blue cross"] * (args.batch // 2)
    cond = policy.encode_prompts(prompts)
    seeds = list(range(args.batch))
    sde = timed(lambda: sample_sde(policy, cond, seeds, args.steps, 1.0, 0.7, 4.5), args.repeats)
    ode = timed(lambda: sample_ode(policy, cond, seeds, args.steps, 1.0, 4.5), args.repeats)
    print(f"toy policy, batch {args.batch}, {args.steps} steps, CFG 4.5, best of {args.repeats}")
    print(f"  plain ODE sampling      {ode * 1000:8.1f} ms")
    print(f"  SDE with log-probs      {sde * 1000:8.1f} ms")
    print(f"  ratio SDE / plain       {sde / ode:8.3f}x  (goal <= 1.05x)")


if __name__ == "__main__":
    main()
