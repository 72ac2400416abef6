"""The cost of a round, P1 to P4 side by side in one run (`make bench`), each a ratio measured here, and where a
projection to SD3.5-M at 512 px applies, that projection with what it assumes.

P1  SDE sampling with log-probs / the plain diffusers pipeline call (tiny SD3, scripts/bench_rollout.py).
P2  embedding (DreamSim, random weights in its real architecture) + clustering / rollout, one group of 24 on the
    tiny SD3; projected from measured per-image costs: DreamSim per image (224 px input whatever the generator's
    size) and one SD3.5-M transformer step at 512 px timed block by block here (both on this CPU, so the ratio of
    two matmul-bound costs). The projection leaves out the VAE decode and the text encoders: a smaller rollout,
    so a larger (conservative) ratio.
P3  an SA-Reg update step / a KL update step, the real optimizer step of the update stage on the tiny SD3 with
    the SD3.5-M SA-Reg preset's trained steps T and SA steps K: the reference forward runs on K steps, not T.
P4  start-up and store I/O / the round, staged (a pod per task) and fused (a pod per segment), side by side:
    measured on the toy through kfp.local against in process, and projected to an SD3.5-M round of 1,152 images;
    then the throughput (images per GPU-second, seconds per round) on the toy, the tiny SD3 and projected to
    SD3.5-M at an assumed GPU peak and MFU (scripts/bench_orchestration.py says how).
--smoke runs every row at tiny sizes in seconds (tests/test_bench_smoke.py), the same code paths.
"""

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import numpy as np
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests")]  # bench_rollout; dreamsim_cache (DreamSim's layout)

from bench_rollout import SMOKE, add_arguments, apply_smoke, measure_sd3, timed_pair  # noqa: E402

from dgrpo.config import ClusterConfig, LoraConfig, ModelConfig, load_config  # noqa: E402
from dgrpo.models.sd3 import SD3Policy  # noqa: E402
from dgrpo.models.tiny import tiny_sd3_pipeline  # noqa: E402
from dgrpo.models.trajectories import SamplerSpec, sample_sde  # noqa: E402

SD35M_TRANSFORMER = {"attention_head_dim": 64, "caption_projection_dim": 1536, "in_channels": 16,
                     "joint_attention_dim": 4096, "num_attention_heads": 24, "out_channels": 16, "patch_size": 2,
                     "pooled_projection_dim": 2048, "pos_embed_max_size": 384, "qk_norm": "rms_norm",
                     "sample_size": 128}
"""stabilityai/stable-diffusion-3.5-medium transformer/config.json, less num_layers (24) and dual_attention_layers
(0..12: the first 13 blocks add an image-only attention)."""
SD35M_LAYERS, SD35M_DUAL = 24, 13
TEXT_TOKENS = 77 + 256  # CLIP-L/G (77) concatenated with T5 (256 tokens in the presets)
LATENT = (16, 64, 64)  # 512 px / 8, 16 channels
GROUP = 24


@dataclass
class Row:
    key: str
    what: str
    measured: float
    goal: float | None
    projected: float | None = None
    notes: list[str] = field(default_factory=list)


def p1(args) -> Row:
    m = measure_sd3(args)
    return Row("P1", "SDE + log-probs / diffusers pipeline", m["ours"] / m["plain"], 1.05, None,
               [f"tiny SD3 {m['params'] / 1e6:.2f}M params, batch {m['batch']}, {args.steps} steps: pipeline "
                f"{m['plain'] * 1e3:.0f} ms, ours {m['ours'] * 1e3:.0f} ms; ODE latents equal the pipeline's: "
                f"{m['same']}"])


def _tiny_policy(args) -> SD3Policy:
    pipe = tiny_sd3_pipeline(width=args.width, num_layers=args.layers, sample_size=args.size)
    return SD3Policy(pipe, ModelConfig(kind="sd3", max_sequence_length=args.max_sequence_length))


def _best(fn, repeats: int, warm_up: bool = True) -> float:
    """Best of `repeats` timed calls, after one untimed call unless `warm_up` is off (--smoke's heavy timings)."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def sd35m_params() -> int:
    """Parameters of the SD3.5-M transformer, counted on the meta device (nothing allocated)."""
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        full = SD3Transformer2DModel(num_layers=SD35M_LAYERS, dual_attention_layers=tuple(range(SD35M_DUAL)),
                                     **SD35M_TRANSFORMER)
    return sum(p.numel() for p in full.parameters())


SMOKE_SD35M = {"latent": (16, 8, 8), "text_tokens": 16, "warm_up": False,
               "shape": {"num_attention_heads": 2, "caption_projection_dim": 128, "joint_attention_dim": 64,
                         "pooled_projection_dim": 32}}
"""--smoke's SD3.5-M step: 2 heads instead of 24 on 8x8 latents, the same blocks timed the same way."""


def sd35m_step_seconds(repeats: int, latent: tuple[int, int, int] = LATENT, text_tokens: int = TEXT_TOKENS,
                       shape: dict | None = None, warm_up: bool = True) -> tuple[float, float]:
    """(seconds of one SD3.5-M transformer step with CFG for one 512 px image, parameters) on this machine.

    Timed as models of 0 blocks, 1 plain block and 1 dual-attention block (random weights, real shapes): the step is
    t0 + 13 (t_dual - t0) + 11 (t_plain - t0). `shape` overrides config entries (--smoke's narrow blocks)."""
    from diffusers import SD3Transformer2DModel

    params = sd35m_params()
    config = SD35M_TRANSFORMER | (shape or {})
    gen = torch.Generator().manual_seed(0)
    inputs = {"hidden_states": torch.randn(2, *latent, generator=gen),
              "encoder_hidden_states": torch.randn(2, text_tokens, config["joint_attention_dim"], generator=gen),
              "pooled_projections": torch.randn(2, config["pooled_projection_dim"], generator=gen),
              "timestep": torch.tensor([500.0, 500.0])}
    times = {}
    for name, layers, dual in (("t0", 0, ()), ("plain", 1, ()), ("dual", 1, (0,))):
        model = SD3Transformer2DModel(num_layers=layers, dual_attention_layers=dual, **config).eval()
        with torch.no_grad():
            times[name] = _best(lambda m=model: m(**inputs), repeats, warm_up=warm_up)
        del model
    step = times["t0"] + SD35M_DUAL * (times["dual"] - times["t0"]) + \
        (SD35M_LAYERS - SD35M_DUAL) * (times["plain"] - times["t0"])
    return step, params


def p2(args, tmp: Path) -> Row:
    from dreamsim_cache import write_random_dreamsim_cache

    from dgrpo.embedders import load_embedder
    from dgrpo.methods.diversegrpo import score_group

    group = args.group
    policy = _tiny_policy(args)
    seeds = list(range(group))
    cond = policy.encode_prompts(["a red square"] * group)
    spec = SamplerSpec(num_steps=args.steps, shift=None, noise_level=0.7, guidance_scale=4.5)
    with torch.no_grad():
        images = policy.decode(sample_sde(policy, cond, seeds, spec=spec).latents[:, -1])

    def rollout():
        with torch.no_grad():
            policy.decode(sample_sde(policy, cond, seeds, spec=spec).latents[:, -1])

    embed = load_embedder("dreamsim", {"cache_dir": str(write_random_dreamsim_cache(tmp / "dreamsim")),
                                       "device": "cpu", "batch_size": group}, cache=False)
    quality = np.random.default_rng(0).random(group)
    t_rollout = _best(rollout, args.repeats_heavy)
    emb = embed(images)  # the warm-up
    t_embed = _best(lambda: embed(images), args.repeats_heavy, warm_up=False)
    clusters = ClusterConfig(k=min(ClusterConfig().k, group))  # the paper's fixed k (the smoke group is smaller)
    t_cluster = _best(lambda: score_group(quality, emb, clusters, 0), args.repeats)
    step, params = sd35m_step_seconds(args.repeats_heavy, **(SMOKE_SD35M if args.smoke else {}))
    steps = load_config(ROOT / "configs" / "sd35m-diversegrpo.yaml").sampling.num_steps
    rollout_35 = GROUP * steps * step
    measured = (t_embed + t_cluster) / t_rollout
    projected = (t_embed / group * GROUP + t_cluster) / rollout_35  # DreamSim per image, for a group of 24
    return Row("P2", f"embedding + clustering / rollout (G={group})", measured, 0.03, projected, [
        f"tiny SD3 group of {group}: rollout {t_rollout:.2f} s, DreamSim {t_embed:.2f} s "
        f"({t_embed / group * 1e3:.0f} ms/image), clustering {t_cluster * 1e3:.1f} ms",
        f"SD3.5-M ({params / 1e9:.2f}B params) one CFG step at 512 px here: {step:.1f} s; x {steps} steps x {GROUP} "
        f"images = {rollout_35:.0f} s (no VAE, no text encoders)"])


def p3(args) -> Row:
    from dgrpo.sampling import Schedule
    from dgrpo.stages.update.options import BaseReference
    from dgrpo.stages.update.replay import Replay
    from dgrpo.stages.update.train import RoundExtras, _optimizer_step, make_accelerator, make_optimizer

    small = {"train.batch_size": 8, "train.micro_batch_size": 4, "train.num_processes": 1}
    sa = load_config(ROOT / "configs" / "sd35m-sareg.yaml", small)
    kl = load_config(ROOT / "configs" / "sd35m-sareg.yaml", small | {"train.regularizer": "kl", "train.beta_kl": 0.04})
    policy = _tiny_policy(args)
    policy.add_lora(LoraConfig(rank=8, alpha=8), seed=0)
    s = sa.sampling
    seeds = list(range(8))
    cond = policy.encode_prompts(["a red square", "a blue cross"] * 4)
    with torch.no_grad():
        traj = sample_sde(policy, cond, seeds, spec=SamplerSpec(num_steps=s.num_steps, shift=None,
                                                                noise_level=s.noise_level,
                                                                guidance_scale=s.guidance_scale))
    acc = make_accelerator("no")
    opt = make_optimizer(policy, sa)
    policy.wrapped_transformer, opt = acc.prepare(policy.transformer, opt)
    adv = torch.randn(8, generator=torch.Generator().manual_seed(0)).unsqueeze(1).repeat(1, 2)  # structure, detail
    replay = Replay(latents=traj.latents, cond=cond, old_log_probs=traj.log_probs, schedule=Schedule(traj.sigmas),
                    advantages=adv)
    steps = list(range(sa.num_train_steps))

    def step(cfg):
        extras = RoundExtras(reference=BaseReference(policy))  # the base model, as the presets regularise
        return lambda: _optimizer_step(acc, policy, opt, cfg=cfg, replay=replay, rows=torch.arange(8), steps=steps,
                                       extras=extras)

    t_kl, t_sa = timed_pair(step(kl), step(sa), args.repeats)
    return Row("P3", "SA-Reg update step / KL update step", t_sa / t_kl, 0.75, None, [
        f"tiny SD3, batch 8, T = {len(steps)} trained steps, SA on K = {sa.train.structure_steps} (the SD3.5-M SA-Reg "
        f"preset's): KL {t_kl * 1e3:.0f} ms, SA-Reg {t_sa * 1e3:.0f} ms; with a reference forward costing r of a "
        f"trained step, the ratio is (T + K r) / (T (1 + r))"])


def p4(args) -> list[Row]:
    from bench_orchestration import p4_rows, sd35m_sizes

    model = {"sizes": sd35m_sizes(SD35M_TRANSFORMER, SD35M_LAYERS, SD35M_DUAL), "latent": LATENT,
             "text_tokens": TEXT_TOKENS, "params": sd35m_params(), "layers": SD35M_LAYERS}
    return [Row(*row) for row in p4_rows(args, model)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--repeats-heavy", type=int, default=2, help="repeats of the heavier timings (P2)")
    parser.add_argument("--group", type=int, default=GROUP, help="images in P2's group (projected to 24)")
    parser.add_argument("--gpu-peak-tflops", type=float, default=989.0,
                        help="assumed GPU peak for P4's SD3.5-M compute (H100 SXM, dense bf16)")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation of that peak")
    parser.add_argument("--pod-start-s", type=float, default=4.0,
                        help="assumed seconds to schedule and start a pod on a warm node (P4)")
    parser.add_argument("--model-load-gbps", type=float, default=2.0,
                        help="assumed GB/s a pod loads its models at from the cluster's model cache (P4)")
    parser.add_argument("--only", nargs="*", default=["P1", "P2", "P3", "P4"])
    args = apply_smoke(parser.parse_args(), SMOKE | {"repeats_heavy": 1, "group": 2})
    torch.set_num_threads(args.threads)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"The cost of a round ({torch.get_num_threads()} threads, {device}); rows print as they are measured")
    if args.smoke:
        print("--smoke: tiny sizes, one repeat: this checks that every row runs; its numbers measure nothing")
    print(f"{'':4}{'ratio':<42}{'measured':>10}{'SD3.5-M':>10}{'goal':>8}  met", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "P1" in args.only:
            _show(p1(args))
        if "P2" in args.only:
            _show(p2(args, tmp))
        if "P3" in args.only:
            _show(p3(args))
        if "P4" in args.only:
            for row in p4(args):
                _show(row)


def _show(r: Row) -> Row:
    value = r.projected if r.projected is not None else r.measured
    proj = f"{r.projected:.3g}" if r.projected is not None else "-"
    goal, met = ("-", "") if r.goal is None else (f"<= {r.goal:g}", "yes" if value <= r.goal else "NO")
    print(f"{r.key:<4}{r.what:<42}{r.measured:>10.3g}{proj:>10}{goal:>8}  {met}", file=sys.__stdout__)
    for note in r.notes:
        print(f"      {note}", file=sys.__stdout__)
    sys.__stdout__.flush()
    return r


if __name__ == "__main__":
    main()
