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
P4  orchestration overhead (process start, imports, model load, artifact I/O) / the round: measured on a toy round
    through kfp.local against the same round in-process, then projected to an SD3.5-M round of 1,152 images from
    the per-task overheads measured here (start + imports per stage, this disk's model-load and the store's I/O
    throughput) and the SD3.5-M compute at an assumed GPU throughput (--gpu-tflops), in GPU-seconds.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests")]  # bench_rollout; dreamsim_cache (DreamSim's layout)

from bench_rollout import add_arguments, measure_sd3, timed_pair  # noqa: E402

from dgrpo.config import ClusterConfig, LoraConfig, ModelConfig, load_config  # noqa: E402
from dgrpo.models.sd3 import SD3Policy  # noqa: E402
from dgrpo.models.tiny import tiny_sd3_pipeline  # noqa: E402
from dgrpo.models.trajectories import sample_sde  # noqa: E402

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
    goal: float
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


def _best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def sd35m_step_seconds(repeats: int) -> tuple[float, float]:
    """(seconds of one SD3.5-M transformer step with CFG for one 512 px image, parameters) on this machine.

    Timed as models of 0 blocks, 1 plain block and 1 dual-attention block (random weights, real shapes): the step is
    t0 + 13 (t_dual - t0) + 11 (t_plain - t0)."""
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        full = SD3Transformer2DModel(num_layers=SD35M_LAYERS, dual_attention_layers=tuple(range(SD35M_DUAL)),
                                     **SD35M_TRANSFORMER)
    params = sum(p.numel() for p in full.parameters())
    gen = torch.Generator().manual_seed(0)
    inputs = {"hidden_states": torch.randn(2, *LATENT, generator=gen),
              "encoder_hidden_states": torch.randn(2, TEXT_TOKENS, 4096, generator=gen),
              "pooled_projections": torch.randn(2, 2048, generator=gen), "timestep": torch.tensor([500.0, 500.0])}
    times = {}
    for name, layers, dual in (("t0", 0, ()), ("plain", 1, ()), ("dual", 1, (0,))):
        model = SD3Transformer2DModel(num_layers=layers, dual_attention_layers=dual, **SD35M_TRANSFORMER).eval()
        with torch.no_grad():
            times[name] = _best(lambda m=model: m(**inputs), repeats)
        del model
    step = times["t0"] + SD35M_DUAL * (times["dual"] - times["t0"]) + \
        (SD35M_LAYERS - SD35M_DUAL) * (times["plain"] - times["t0"])
    return step, params


def p2(args, tmp: Path) -> tuple[Row, dict]:
    from dreamsim_cache import write_random_dreamsim_cache

    from dgrpo.embedders import load_embedder
    from dgrpo.stages.cluster import score_group

    policy = _tiny_policy(args)
    seeds = list(range(GROUP))
    cond = policy.encode_prompts(["a red square"] * GROUP)
    with torch.no_grad():
        images = policy.decode(sample_sde(policy, cond, seeds, args.steps, None, 0.7, 4.5).latents[:, -1])

    def rollout():
        with torch.no_grad():
            policy.decode(sample_sde(policy, cond, seeds, args.steps, None, 0.7, 4.5).latents[:, -1])

    embed = load_embedder("dreamsim", {"cache_dir": str(write_random_dreamsim_cache(tmp / "dreamsim")),
                                       "device": "cpu", "batch_size": GROUP}, cache=False)
    quality = np.random.default_rng(0).random(GROUP)
    t_rollout = _best(rollout, args.repeats_heavy)
    t_embed = _best(lambda: embed(images), args.repeats_heavy)
    emb = embed(images)
    t_cluster = _best(lambda: score_group(quality, emb, ClusterConfig(), 0), args.repeats)
    step, params = sd35m_step_seconds(args.repeats_heavy)
    steps = load_config(ROOT / "configs" / "sd35m-diversegrpo.yaml").sampling.num_steps
    rollout_35 = GROUP * steps * step
    projected = (t_embed + t_cluster) / rollout_35
    measured = (t_embed + t_cluster) / t_rollout
    return Row("P2", "embedding + clustering / rollout (G=24)", measured, 0.03, projected, [
        f"tiny SD3 group of {GROUP}: rollout {t_rollout:.2f} s, DreamSim {t_embed:.2f} s "
        f"({t_embed / GROUP * 1e3:.0f} ms/image), clustering {t_cluster * 1e3:.1f} ms",
        f"SD3.5-M ({params / 1e9:.2f}B params) one CFG step at 512 px here: {step:.1f} s; x {steps} steps x {GROUP} "
        f"images = {rollout_35:.0f} s (no VAE, no text encoders)"]), {"step_seconds": step, "params": params}


def p3(args) -> Row:
    from dgrpo.stages.update.options import Reference
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
        traj = sample_sde(policy, cond, seeds, s.num_steps, None, s.noise_level, s.guidance_scale)
    acc = make_accelerator("no")
    opt = make_optimizer(policy, sa)
    policy.wrapped_transformer, opt = acc.prepare(policy.transformer, opt)
    adv = torch.randn(8, generator=torch.Generator().manual_seed(0))
    steps = list(range(sa.num_train_steps))

    def step(cfg):
        extras = RoundExtras(reference=Reference(cfg, policy, None))  # the base model, as the presets regularise
        return lambda: _optimizer_step(acc, policy, opt, cfg, torch.arange(8), traj.latents, cond, traj.log_probs,
                                       adv, traj.sigmas, steps, extras)

    t_kl, t_sa = timed_pair(step(kl), step(sa), args.repeats)
    return Row("P3", "SA-Reg update step / KL update step", t_sa / t_kl, 0.75, None, [
        f"tiny SD3, batch 8, T = {len(steps)} trained steps, SA on K = {sa.train.sa_steps} (the SD3.5-M SA-Reg "
        f"preset's): KL {t_kl * 1e3:.0f} ms, SA-Reg {t_sa * 1e3:.0f} ms; with a reference forward costing r of a "
        f"trained step, the ratio is (T + K r) / (T (1 + r))"])


def _start_and_imports(stage: str) -> float:
    """Wall seconds of a fresh python that imports what a stage task imports (KFP executor, glue, the stage)."""
    code = f"import kfp.dsl.executor_main, dgrpo.runtime.component_io, dgrpo.stages.{stage}"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def _disk_read_gbps(tmp: Path, size_mb: int = 512) -> float:
    """Cold read of a freshly written safetensors file (page cache dropped for it): model-load throughput."""
    from safetensors.torch import load_file, save_file

    path = tmp / "weights.safetensors"
    save_file({"w": torch.randn(size_mb * 2**18)}, str(path))
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    start = time.perf_counter()
    load_file(str(path))
    return size_mb / 1024 / (time.perf_counter() - start)


def _store_gbps(tmp: Path, size_mb: int = 256) -> float:
    """Write then read through the local artifact store (content-addressed, atomic, hashed)."""
    from dgrpo.store import LocalStore

    store = LocalStore(tmp / "iostore")
    data = os.urandom(size_mb * 2**20)
    start = time.perf_counter()
    ref = store.put(data, kind="bench", suffix=".bin")
    store.get(ref)
    return 2 * size_mb / 1024 / (time.perf_counter() - start)


def _toy_round(tmp: Path) -> tuple[float, float]:
    """Wall seconds of one toy round (evaluations included) through kfp.local and in-process (warm)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import small_config
    from dgrpo_pipelines.local import open_context, run_pipeline

    from dgrpo.runtime.engine import run_inprocess

    cfg = small_config(rounds=1)
    run_inprocess(open_context(cfg, str(tmp / "warm"), "warm"))  # imports, embedder and model caches
    start = time.perf_counter()
    run_inprocess(open_context(cfg, str(tmp / "inproc"), "inproc"))
    t_in = time.perf_counter() - start
    start = time.perf_counter()
    run_pipeline(open_context(cfg, str(tmp / "kfp"), "kfp"), str(tmp / "kfp"), tmp / "kfp-work", "kfp")
    return time.perf_counter() - start, t_in


def _bytes_of(model) -> int:
    return sum(p.numel() * 2 for p in model.parameters())  # fp16/bf16, as the presets load them


def sd35m_sizes() -> dict[str, int]:
    """Bytes of what each SD3.5-M task loads, from the models' configs on the meta device (nothing downloaded)."""
    from diffusers import SD3Transformer2DModel
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    with torch.device("meta"):
        transformer = SD3Transformer2DModel(num_layers=SD35M_LAYERS, dual_attention_layers=tuple(range(SD35M_DUAL)),
                                            **SD35M_TRANSFORMER)
        clip_l = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                                            num_hidden_layers=12, num_attention_heads=12,
                                                            projection_dim=768))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120,
                                                            num_hidden_layers=32, num_attention_heads=20,
                                                            projection_dim=1280))
        t5 = T5EncoderModel(T5Config(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
                                     feed_forward_proj="gated-gelu", vocab_size=32128))
        pickscore = CLIPModel(CLIPConfig(
            text_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                         "num_attention_heads": 16},
            vision_config={"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                           "num_attention_heads": 16, "patch_size": 14, "image_size": 224}, projection_dim=1024))
    return {"transformer": _bytes_of(transformer),
            "text_encoders": _bytes_of(clip_l) + _bytes_of(clip_g) + _bytes_of(t5),
            "vae": 84 * 10**6 * 4, "reward": _bytes_of(pickscore) * 2, "dreamsim": 3 * 86 * 10**6 * 4}


def p4(args, tmp: Path, p2_info: dict) -> Row:
    t_kfp, t_in = _toy_round(tmp)
    measured = (t_kfp - t_in) / t_kfp
    starts = {s: _start_and_imports(s) for s in ("rollout", "reward", "cluster", "update")}
    disk, store_io = _disk_read_gbps(tmp), _store_gbps(tmp)
    cfg = load_config(ROOT / "configs" / "sd35m-pickscore.yaml")
    shards, gpus_update = cfg.pipeline.shards, cfg.train.num_processes
    images = cfg.sampling.prompts_per_round * cfg.sampling.group_size
    sizes = sd35m_sizes()
    latent_bytes = (cfg.sampling.num_steps + 1) * int(np.prod(LATENT)) * 4 + 400_000  # trajectory + a 512 px PNG
    gb = 1024**3
    # (GPUs held, seconds of overhead) per task of the round
    tasks = [(1, starts["rollout"] + (sizes["transformer"] + sizes["text_encoders"] + sizes["vae"]) / gb / disk
              + images / shards * latent_bytes / gb / store_io)] * shards
    tasks += [(1, starts["reward"] + sizes["reward"] / gb / disk + images / shards * latent_bytes / gb / store_io)] \
        * shards
    tasks += [(1, starts["cluster"] + sizes["dreamsim"] / gb / disk + images * latent_bytes / gb / store_io)]
    tasks += [(gpus_update, starts["update"] + sizes["transformer"] / gb / disk
               + images * latent_bytes / gb / store_io)]
    overhead = sum(g * s for g, s in tasks)
    # compute in GPU-seconds at the assumed throughput: rollout steps with CFG, update T trained steps with CFG
    # (forward + backward ~ 3 forwards) plus the KL reference forward
    tokens = int(np.prod(LATENT[1:])) // 4 + TEXT_TOKENS
    fwd = 2 * p2_info["params"] * tokens + 4 * SD35M_LAYERS * tokens**2 * 1536
    flops = images * 2 * fwd * (cfg.sampling.num_steps + cfg.num_train_steps * (3 + 1))
    compute = flops / (args.gpu_tflops * 1e12)
    projected = overhead / (overhead + compute)
    return Row("P4", "orchestration overhead / round", measured, 0.05, projected, [
        f"toy round through kfp.local {t_kfp:.0f} s, in-process {t_in:.0f} s",
        "start + imports per task: " + ", ".join(f"{k} {v:.1f} s" for k, v in starts.items()),
        f"model-load read {disk:.2f} GB/s (this disk, cold), store I/O {store_io:.2f} GB/s",
        f"SD3.5-M round: {images} images, {shards} rollout + {shards} reward pods, cluster, update on {gpus_update} "
        f"GPUs; loads {sum(sizes[k] for k in ('transformer', 'text_encoders', 'vae')) / gb:.1f} GB per rollout pod; "
        f"overhead {overhead:.0f} GPU-s vs compute {compute:.0f} GPU-s at {args.gpu_tflops:.0f} TFLOP/s "
        "(assumed: bf16 on an H100 at ~40% of peak)"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--repeats-heavy", type=int, default=2, help="repeats of the heavier timings (P2)")
    parser.add_argument("--gpu-tflops", type=float, default=400.0,
                        help="effective GPU throughput assumed for the SD3.5-M compute of P4")
    parser.add_argument("--only", nargs="*", default=["P1", "P2", "P3", "P4"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"The cost of a round ({torch.get_num_threads()} threads, {device}); rows print as they are measured")
    print(f"{'':4}{'ratio':<42}{'measured':>10}{'SD3.5-M':>10}{'goal':>8}  met", flush=True)
    rows, p2_info = [], None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "P1" in args.only:
            rows.append(_show(p1(args)))
        if "P2" in args.only or "P4" in args.only:
            row, p2_info = p2(args, tmp)
            rows += [_show(row)] if "P2" in args.only else []
        if "P3" in args.only:
            rows.append(_show(p3(args)))
        if "P4" in args.only:
            rows.append(_show(p4(args, tmp, p2_info)))


def _show(r: Row) -> Row:
    value = r.projected if r.projected is not None else r.measured
    proj = f"{r.projected:.3g}" if r.projected is not None else "-"
    print(f"{r.key:<4}{r.what:<42}{r.measured:>10.3g}{proj:>10}{'<= ' + format(r.goal, 'g'):>8}  "
          f"{'yes' if value <= r.goal else 'NO'}", file=sys.__stdout__)
    for note in r.notes:
        print(f"      {note}", file=sys.__stdout__)
    sys.__stdout__.flush()
    return r

if __name__ == "__main__":
    main()
