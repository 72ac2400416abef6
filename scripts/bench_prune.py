"""Benchmark P5: Pro-GRPO's expand-and-prune against plain sampling of the same survivors, side by side in one run
(goal: >= 1.25x fewer transformer evaluations; the paper reports 1.26x to 1.41x at equal quality).

Both arms end with the same number of survivors per prompt chosen by Optimal Variance Filtering from the same
G_max seeds: "plain" samples all G_max trajectories to the end, decodes and scores them and keeps the OVF subset of
the final rewards (Pro-GRPO's static OVF); "expand-and-prune" scores decoded previews x0_hat = x - sigma v at the
prune steps and stops the others there, then decodes and scores its survivors. NFEs are velocity evaluations per
sample and step (two transformer passes each under CFG), counted on the policy; wall time is the whole rollout of
a round's prompts (sampling, decoding, scoring), best of --repeats, measured alternately.

1. The toy policy with the toy reward (the reward of `make experiment-toy`).
2. Tiny random-weight SD3 (dgrpo.models.tiny) with its VAE and a stand-in reward (mean brightness; its cost is
   negligible, so this arm shows the transformer's and VAE's share).
"""

import argparse
import time

import numpy as np
import torch

from dgrpo.config import ModelConfig
from dgrpo.methods.progrpo import nfe_of_schedule, optimal_variance_subset
from dgrpo.models import FlowPolicy, load_policy
from dgrpo.models.sd3 import SD3Policy
from dgrpo.models.tiny import tiny_sd3_pipeline
from dgrpo.models.trajectories import SamplerSpec, sample_sde
from dgrpo.rewards import load_reward


def brightness(images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
    return {"reward": images.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0}


def rollout_round(policy: FlowPolicy, reward, prompts: list[str], args, prune: bool) -> tuple[int, list[list[int]]]:
    """One round's rollout of every prompt; returns (NFEs, survivors' seed positions per prompt)."""
    sizes = dict(zip(args.prune_steps, args.prune_sizes, strict=True))
    nfe, kept = 0, []
    for p, prompt in enumerate(prompts):
        cond = {k: v.expand(args.g_max, *v.shape[1:]) for k, v in policy.encode_prompts([prompt]).items()}
        seeds = [1000 * p + k for k in range(args.g_max)]

        def pruner(step, previews, positions, prompt=prompt):
            scores = reward(policy.decode(previews), [prompt] * len(previews))["reward"]
            return [positions[i] for i in optimal_variance_subset(np.asarray(scores), sizes[step])]

        spec = SamplerSpec(num_steps=args.steps, shift=None, noise_level=0.7, guidance_scale=4.5,
                           batch_size=args.batch, prune_steps=tuple(args.prune_steps) if prune else (),
                           prune=pruner if prune else None)
        traj = sample_sde(policy, cond, seeds, spec=spec)
        final = reward(policy.decode(traj.latents[:, -1]), [prompt] * len(traj.positions))["reward"]
        survivors = traj.positions if prune else [traj.positions[i] for i in
                                                  optimal_variance_subset(np.asarray(final), args.prune_sizes[-1])]
        nfe += traj.nfe
        kept.append(survivors)
    return nfe, kept


def _timed(fn) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def bench(name: str, policy: FlowPolicy, reward, args) -> None:
    prompts = args.prompts
    plain = lambda: rollout_round(policy, reward, prompts, args, prune=False)  # noqa: E731
    pruned = lambda: rollout_round(policy, reward, prompts, args, prune=True)  # noqa: E731
    plain(), pruned()  # warm-up
    times = [(_timed(plain), _timed(pruned)) for _ in range(args.repeats)]
    (t_plain, (nfe_plain, kept_plain)), (t_pruned, (nfe_pruned, kept_pruned)) = times[0]
    t_plain, t_pruned = min(t[0][0] for t in times), min(t[1][0] for t in times)
    expected = len(prompts) * nfe_of_schedule(args.g_max, args.steps, args.prune_steps, args.prune_sizes)
    schedule = " -> ".join(map(str, [args.g_max, *args.prune_sizes]))
    print(f"{name}: {len(prompts)} prompts, {schedule} at steps {args.prune_steps} of {args.steps}, "
          f"CFG 4.5, best of {args.repeats}")
    print(f"  NFEs per round      plain {nfe_plain:6d}   expand-and-prune {nfe_pruned:6d} (schedule: {expected})")
    print(f"  NFE ratio           {nfe_plain / nfe_pruned:8.3f}x fewer  (goal >= 1.25x)")
    print(f"  wall time           plain {t_plain * 1000:8.1f} ms   expand-and-prune {t_pruned * 1000:8.1f} ms")
    print(f"  wall-time ratio     {t_plain / t_pruned:8.3f}x faster (previews decoded and scored included)")
    same = sum(len(set(a) & set(b)) for a, b in zip(kept_plain, kept_pruned, strict=True))
    print(f"  survivors shared    {same} of {sum(map(len, kept_plain))} (previews pick by the mid-trajectory reward)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--g-max", type=int, default=48)
    parser.add_argument("--prune-steps", type=int, nargs="+", default=[5, 7])
    parser.add_argument("--prune-sizes", type=int, nargs="+", default=[24, 12])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=None, help="samples per forward pass (default: all live)")
    parser.add_argument("--prompts", nargs="+", default=["a red square", "a blue cross", "a green cross"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-sd3", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes and one repeat: the same code paths in seconds (tests/test_bench_smoke.py)")
    args = parser.parse_args()
    if args.smoke:
        args.g_max, args.prune_steps, args.prune_sizes, args.steps = 6, [1, 2], [4, 2], 3
        args.prompts, args.repeats = args.prompts[:1], 1
    torch.set_num_threads(args.threads)
    bench("toy policy, toy reward", load_policy(ModelConfig()), load_reward("toy"), args)
    if not args.skip_sd3:
        policy = SD3Policy(tiny_sd3_pipeline(), ModelConfig(kind="sd3", max_sequence_length=32))
        bench("tiny SD3 (random weights), brightness reward", policy, brightness, args)


if __name__ == "__main__":
    main()
