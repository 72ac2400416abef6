"""Rollout cost, side by side in one run (goal: SDE sampling with log-probs at most 1.05x the plain sampler).

1. Tiny random-weight SD3 (dgrpo.models.tiny): our SDE sampler with per-step log-probs versus the plain
   diffusers StableDiffusion3Pipeline call, same model, steps, batch, CFG and seeds; both encode the prompts
   and stop at the latents.
2. The toy policy: SDE with log-probs versus our deterministic ODE sampler.
`--width` scales the tiny SD3 model (use e.g. --width 8 --layers 8 --size 64 on a GPU); `--smoke` runs both at
tiny sizes in seconds.
"""

import argparse
import time

import torch

from dgrpo.config import ModelConfig
from dgrpo.models import load_policy
from dgrpo.models.sd3 import SD3Policy
from dgrpo.models.tiny import tiny_sd3_pipeline
from dgrpo.models.trajectories import SamplerSpec, sample_ode, sample_sde


def _once(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed_pair(a, b, repeats: int) -> tuple[float, float]:
    """Best-of-`repeats` times of `a` and `b`, measured alternately so machine load hits both alike."""
    a(), b()  # warm-up
    times = [(_once(a), _once(b)) for _ in range(repeats)]
    return min(t[0] for t in times), min(t[1] for t in times)


def measure_sd3(args) -> dict:
    """Best-of times of the diffusers pipeline call and of our SDE sampler with log-probs on the tiny SD3 model."""
    pipe = tiny_sd3_pipeline(width=args.width, num_layers=args.layers, sample_size=args.size)
    pipe.set_progress_bar_config(disable=True)
    cfg = ModelConfig(kind="sd3", dtype=args.dtype, max_sequence_length=args.max_sequence_length)
    policy = SD3Policy(pipe, cfg)
    prompts = ["a red square", "a photo of a cat on a sofa"] * (args.sd3_batch // 2)
    seeds = list(range(len(prompts)))
    size = policy.height

    def plain():
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return pipe(prompt=prompts, num_inference_steps=args.steps, guidance_scale=4.5, generator=gens, height=size,
                    width=size, max_sequence_length=args.max_sequence_length, output_type="latent").images

    def ours():
        with torch.no_grad():
            spec = SamplerSpec(num_steps=args.steps, shift=None, noise_level=0.7, guidance_scale=4.5)
            return sample_sde(policy, policy.encode_prompts(prompts), seeds, spec=spec)

    with torch.no_grad():
        ode = sample_ode(policy, policy.encode_prompts(prompts), seeds, args.steps, None, 4.5)
    same = torch.equal(ode.to(plain().device), plain())
    t_plain, t_ours = timed_pair(plain, ours, args.repeats)
    n_params = sum(p.numel() for p in policy.transformer.parameters())
    return {"plain": t_plain, "ours": t_ours, "same": same, "params": n_params, "size": size,
            "batch": len(prompts), "device": str(policy.device)}


def bench_sd3(args) -> None:
    m = measure_sd3(args)
    print(f"tiny SD3 ({m['params'] / 1e6:.2f}M transformer params, {m['size']}px, {args.dtype}, {m['device']}), "
          f"batch {m['batch']}, {args.steps} steps, CFG 4.5, best of {args.repeats}")
    print(f"  our ODE sampler equals the pipeline's latents: {m['same']}")
    print(f"  diffusers pipeline call  {m['plain'] * 1000:8.1f} ms")
    print(f"  SDE with log-probs       {m['ours'] * 1000:8.1f} ms")
    print(f"  ratio SDE / pipeline     {m['ours'] / m['plain']:8.3f}x  (goal <= 1.05x)")


def bench_toy(args) -> None:
    policy = load_policy(ModelConfig())
    prompts = ["a red square", "a blue cross"] * (args.batch // 2)
    cond = policy.encode_prompts(prompts)
    seeds = list(range(args.batch))
    ode, sde = timed_pair(lambda: sample_ode(policy, cond, seeds, args.steps, 1.0, 4.5),
                          lambda: sample_sde(policy, cond, seeds, spec=SamplerSpec(
                              num_steps=args.steps, shift=1.0, noise_level=0.7, guidance_scale=4.5)), args.repeats)
    print(f"toy policy, batch {args.batch}, {args.steps} steps, CFG 4.5, best of {args.repeats}")
    print(f"  plain ODE sampling       {ode * 1000:8.1f} ms")
    print(f"  SDE with log-probs       {sde * 1000:8.1f} ms")
    print(f"  ratio SDE / plain        {sde / ode:8.3f}x  (goal <= 1.05x)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=96, help="toy batch")
    parser.add_argument("--sd3-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--width", type=int, default=1)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--size", type=int, default=16, help="tiny SD3 latent size (image = 2x)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-sequence-length", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-toy", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes and one repeat: the same code paths in seconds (tests/test_bench_smoke.py)")


SMOKE = {"batch": 4, "sd3_batch": 2, "steps": 3, "repeats": 1, "size": 8, "max_sequence_length": 16}
"""What --smoke sets (a smoke run checks that the bench runs, not what it measures)."""


def apply_smoke(args: argparse.Namespace, smoke: dict) -> argparse.Namespace:
    """`args` with the `smoke` sizes where --smoke is given."""
    if args.smoke:
        for name, value in smoke.items():
            setattr(args, name, value)
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    args = apply_smoke(parser.parse_args(), SMOKE)
    torch.set_num_threads(args.threads)
    bench_sd3(args)
    if not args.skip_toy:
        bench_toy(args)


if __name__ == "__main__":
    main()
