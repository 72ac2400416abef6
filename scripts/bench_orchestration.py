"""P4 of `make bench` (scripts/bench_round.py): what a round pays besides its GPU work, staged against fused, and
the throughput a platform team compares (images per GPU-second, seconds per round).

Measured on this machine: the toy through kfp.local staged and fused against the same fine-tune in process (the
difference is start-up, imports, model loads and kfp.local's own work), fused at two rounds_per_run (its start-up
is paid once a segment, so its overhead per round falls as 1 / rounds_per_run), a tiny SD3 fine-tune in process,
each task's process start + imports, and the store's throughput. Projected to an SD3.5-M round (the
sd35m-pickscore preset: 1,152 images, 8 GPUs) in GPU-seconds from those and from what is assumed (pod start, the
model cache's bandwidth, GPU peak and MFU; bench_round.py's options): a staged task holds its GPUs while it starts
and loads its models every round, a fused segment holds the pod's GPUs while it starts once, and every round's
rollouts (about 3.5 GB with their trajectories) go to the store in both: synchronously in staged, and in fused
through each process's resident store (written behind, read back from memory), with the synchronous figure beside
it (IO_MODES).
"""

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
GB = 1024**3
TOY_IMAGES_NOTE = "one CPU here counts as one GPU"
TOY_ROUNDS = 4
"""Toy rounds of each timed run: one segment, and two segments of TOY_ROUNDS / 2 rounds."""
VERL_OMNI = "verl-omni: 0.31 images/GPU-s (LoRA, 4 x H800, Qwen-Image, 420 s a step), context only"


@dataclass
class Assumptions:
    gpu_peak_tflops: float
    mfu: float
    pod_start_s: float
    """Seconds to schedule and start one pod; KFP v2 starts two per task (driver and the task's pod)."""
    model_load_gbps: float
    """GB/s a pod reads its models at from the cluster's model cache."""

    @property
    def flops_per_s(self) -> float:
        return self.gpu_peak_tflops * 1e12 * self.mfu


def start_and_imports(stages: tuple[str, ...]) -> float:
    """Wall seconds of a fresh python that imports what a task running `stages` imports (KFP executor, glue)."""
    code = "import kfp.dsl.executor_main, dgrpo.runtime.component_io, " + ", ".join(f"dgrpo.stages.{s}"
                                                                                   for s in stages)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def disk_read_gbps(tmp: Path, size_mb: int) -> float:
    """Cold read of a freshly written file (page cache dropped for it, where the kernel lets us): this machine's
    disk, for reference (the projection assumes a cluster's model cache, --model-load-gbps)."""
    path = tmp / "weights.bin"
    path.write_bytes(os.urandom(size_mb * 2**20))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        start = time.perf_counter()
        while os.read(fd, 16 * 2**20):
            pass
        return size_mb / 1024 / (time.perf_counter() - start)
    finally:
        os.close(fd)


def store_gbps(tmp: Path, size_mb: int) -> dict[str, float]:
    """GB/s through the local artifact store (content-addressed, atomic, hashed): a synchronous write and read
    ("sync", both ways), a write alone ("write"), and what a fused process waits for when it writes through the
    resident store ("put": the hash, the write queued)."""
    from dgrpo.store import LocalStore, ResidentStore

    gb, store = size_mb / 1024, LocalStore(tmp / "iostore")
    data = os.urandom(size_mb * 2**20)
    start = time.perf_counter()
    ref = store.put(data, kind="bench", suffix=".bin")
    written = time.perf_counter()
    store.get(ref)
    read = time.perf_counter()
    resident = ResidentStore(LocalStore(tmp / "iostore-resident"))
    resident.put(data[::-1], kind="bench", suffix=".bin")
    queued = time.perf_counter()
    resident.close()
    return {"sync": 2 * gb / (read - start), "write": gb / (written - start), "put": gb / (queued - read)}


def _bytes_of(model) -> int:
    return sum(p.numel() * 2 for p in model.parameters())  # fp16/bf16, as the presets load them


def sd35m_sizes(transformer_kwargs: dict, layers: int, dual: int) -> dict[str, int]:
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
        transformer = SD3Transformer2DModel(num_layers=layers, dual_attention_layers=tuple(range(dual)),
                                            **transformer_kwargs)
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


@dataclass
class Timed:
    seconds: float
    rounds: int
    segments: int
    images_per_round: int

    @property
    def per_round(self) -> float:
        return self.seconds / self.rounds

    @property
    def images_per_s(self) -> float:
        return self.images_per_round / self.per_round


def timed_run(cfg, tmp: Path, name: str, engine: str) -> Timed:
    """Wall seconds of a whole fine-tune of `cfg` (all its segments) with `engine` ("inprocess" or "kfp")."""
    from dgrpo_pipelines.local import open_context, run_pipeline

    from dgrpo.runs.commits import trained_state
    from dgrpo.runtime.engine import run_inprocess

    ctx = open_context(cfg, str(tmp / name), name)
    start = time.perf_counter()
    if engine == "inprocess":
        run_inprocess(ctx)
    else:
        run_pipeline(ctx, str(tmp / name), tmp / f"{name}-work", engine)
    seconds = time.perf_counter() - start
    done = trained_state(ctx.store, name).next_round
    if done != cfg.rounds:
        raise RuntimeError(f"bench run {name}: {done} of {cfg.rounds} rounds committed (see {tmp / name})")
    segments = -(-cfg.rounds // cfg.pipeline.rounds_per_run)
    return Timed(seconds, cfg.rounds, segments, cfg.sampling.prompts_per_round * cfg.sampling.group_size)


def toy_configs(smoke: bool) -> dict:
    """The toy fine-tunes P4 times: {name: (engine, config)}, on the reliability tests' toy (a round computes for
    about a second), so the start-up stands out of a shared machine's noise. Smoke: 1 round, in process and fused."""
    sys.path.insert(0, str(ROOT / "tests"))
    from reliability_helpers import tiny_config

    if smoke:
        return {"inprocess": ("inprocess", tiny_config(rounds=1)),
                "fused": ("kfp", tiny_config(rounds=1, **{"pipeline.execution": "fused"}))}
    rounds, fused = TOY_ROUNDS, {"pipeline.execution": "fused"}
    return {"inprocess": ("inprocess", tiny_config(rounds=rounds, **{"pipeline.rounds_per_run": rounds})),
            "staged": ("kfp", tiny_config(rounds=rounds, **{"pipeline.execution": "staged",
                                                            "pipeline.rounds_per_run": rounds})),
            "fused": ("kfp", tiny_config(rounds=rounds, **fused | {"pipeline.rounds_per_run": rounds})),
            f"fused-{rounds // 2}": ("kfp", tiny_config(rounds=rounds, **fused | {"pipeline.rounds_per_run":
                                                                                rounds // 2}))}


def tiny_sd3_run(tmp: Path, smoke: bool) -> Timed:
    """A fine-tune of the tiny random-weight SD3 (dgrpo.models.tiny) in process: every stage on a real backbone."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import small_config

    from dgrpo.models.tiny import tiny_sd3_pipeline

    path = tmp / "tiny-sd3"
    tiny_sd3_pipeline().save_pretrained(path)
    cfg = small_config(**{
        "rounds": 1 if smoke else 2, "model.kind": "sd3", "model.pretrained": str(path), "model.resolution": 32,
        "model.max_sequence_length": 8, "sampling.num_steps": 2 if smoke else 10,
        "sampling.group_size": 2 if smoke else 4, "sampling.prompts_per_round": 2,
        "train.batch_size": 4 if smoke else 8, "train.micro_batch_size": 4,
        "cluster.embedder": None, "train.regularizer": "kl", "train.beta_kl": 0.01, "lora.rank": 4,
        "lora.alpha": 8, "eval.every": 100, "eval.samples_per_prompt": 2, "eval.num_steps": 3})
    return timed_run(cfg, tmp, "tiny-sd3", "inprocess")


@dataclass
class Sd35Round:
    """An SD3.5-M round in GPU-seconds: its compute, and what staged and fused pay besides."""

    images: int
    gpus: int
    rounds_per_run: int
    compute: float
    staged: float
    fused_startup: float
    """One fused segment's start-up (pod, imports, every model loaded once per process), in GPU-seconds."""
    fused_io: dict[str, float]
    """The fused round's store traffic in GPU-seconds, by how it is paid (IO_MODES)."""
    rollout_gb: float
    notes: list[str]

    def fused(self, io: str = "resident") -> float:
        return self.fused_startup / self.rounds_per_run + self.fused_io[io]

    def share(self, overhead: float) -> float:
        return overhead / (overhead + self.compute)

    def per_gpu_s(self, overhead: float) -> float:
        return self.images / (overhead + self.compute)

    def seconds(self, overhead: float) -> float:
        return (overhead + self.compute) / self.gpus


IO_MODES = {"resident": "as the fused processes run (dgrpo.store.resident): each hashes what it writes and queues "
                        "it, reads its own shards back from memory (reward, the cluster's embeddings, its update "
                        "rows), and waits for its rollout shard to land before the processes exchange references "
                        "(no overlap with the reward step credited)",
            "synchronous": "every write and read through the store as it happens (pipeline.resident_gb 0): reward "
                           "reads its shard, the cluster the round on one GPU while the others wait, the update "
                           "the round in every process"}


def project_sd35m(measured: dict, assume: Assumptions, model: dict) -> Sd35Round:
    """The SD3.5-M round of the sd35m-pickscore preset from the costs `measured` here and `assume`d."""
    from dgrpo.config import load_config

    cfg = load_config(ROOT / "configs" / "sd35m-pickscore.yaml")
    shards, gpus = cfg.pipeline.shards, cfg.train.num_processes
    images = cfg.sampling.prompts_per_round * cfg.sampling.group_size
    sizes, load, io, starts = model["sizes"], assume.model_load_gbps, measured["store"], measured["starts"]
    latent = model["latent"]
    png = images * 400_000 / GB  # a 512 px PNG per image
    rollout = images * (cfg.sampling.num_steps + 1) * int(np.prod(latent)) * 4 / GB + png  # with the trajectories
    pods = 2 * assume.pod_start_s
    pipeline_gb = (sizes["transformer"] + sizes["text_encoders"] + sizes["vae"]) / GB
    # GPU-seconds of store traffic. Synchronous: rollout writes and reward reads a shard per GPU, cluster reads the
    # round on one GPU (staged: a pod of its own; fused: the others wait for it), the update reads it in every
    # process. Resident: each GPU's process hashes and queues its shard, then waits for it to land at the exchange.
    sync = io["sync"]
    staged_io = 3 * rollout / sync + gpus * rollout / sync
    fused_io = {"resident": rollout / io["put"] + rollout / io["write"],
                "synchronous": (2 * rollout + 2 * gpus * rollout) / sync}
    staged = sum([shards * (pods + starts["rollout"] + pipeline_gb / load),
                  shards * (pods + starts["reward"] + sizes["reward"] / GB / load),
                  pods + starts["cluster"] + sizes["dreamsim"] / GB / load,
                  gpus * (pods + starts["update"] + sizes["transformer"] / GB / load)]) + staged_io
    all_models = sum(sizes.values()) / GB
    fused_startup = gpus * (pods + starts["fused"] + all_models / load)
    tokens = int(np.prod(latent[1:])) // 4 + model["text_tokens"]
    fwd = 2 * model["params"] * tokens + 4 * model["layers"] * tokens**2 * 1536
    flops = images * 2 * fwd * (cfg.sampling.num_steps + cfg.num_train_steps * (3 + 1))  # CFG; fwd+bwd = 3 fwd; ref
    compute = flops / assume.flops_per_s
    notes = [f"SD3.5-M round (sd35m-pickscore): {images} images = {cfg.sampling.prompts_per_round} prompts x "
             f"{cfg.sampling.group_size}, {gpus} GPUs, {shards} shards, rounds_per_run {cfg.pipeline.rounds_per_run}; "
             f"compute {compute:.0f} GPU-s at {assume.gpu_peak_tflops:.0f} TFLOP/s peak x MFU {assume.mfu:.2f} "
             f"(assumed; {cfg.sampling.num_steps} sampling steps and {cfg.num_train_steps} trained steps with CFG)",
             f"assumed: pod start {assume.pod_start_s:.0f} s, two pods a KFP task (driver + task); model loads at "
             f"{load:.1f} GB/s a pod from the model cache; a fused segment loads {all_models:.1f} GB per process "
             f"once, a staged rollout pod {pipeline_gb:.1f} GB every round"]
    return Sd35Round(images, gpus, cfg.pipeline.rounds_per_run, compute, staged, fused_startup, fused_io, rollout,
                     notes)


def measure_costs(tmp: Path, smoke: bool) -> dict:
    """Start + imports per staged task and for the fused task (all stages), disk and store throughput."""
    stages = ("rollout", "reward", "cluster", "update", "evaluate")
    fused = start_and_imports(stages)
    starts = {"fused": fused} | ({s: fused for s in stages[:4]} if smoke else
                                 {s: start_and_imports((s,)) for s in stages[:4]})
    return {"starts": starts, "disk": disk_read_gbps(tmp, 16 if smoke else 512),
            "store": store_gbps(tmp, 16 if smoke else 256)}


def toy_runs(args, tmp: Path) -> dict[str, Timed]:
    """The toy runs timed, in process once before and once after the kfp.local ones (the faster counts: this
    machine is shared, and the difference is what P4 reads)."""
    runs = toy_configs(args.smoke)
    engine, cfg = runs.pop("inprocess")
    first = timed_run(cfg, tmp, "inprocess", engine)
    toy = {key: timed_run(c, tmp, key, e) for key, (e, c) in runs.items()}
    second = first if args.smoke else timed_run(cfg, tmp, "inprocess-again", engine)
    return {"inprocess": min(first, second, key=lambda t: t.seconds)} | toy


def p4_rows(args, model: dict) -> list[tuple]:
    """P4's rows: (key, what, measured, goal, projected, notes) for staged and fused, then the throughput."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        toy = toy_runs(args, tmp)
        sd3 = tiny_sd3_run(tmp, args.smoke)
        measured = measure_costs(tmp, args.smoke)
    assume = Assumptions(args.gpu_peak_tflops, args.mfu, args.pod_start_s, args.model_load_gbps)
    sd35 = project_sd35m(measured, assume, model)
    base = toy["inprocess"]

    def extra(t: Timed) -> float:  # seconds a toy run spends beyond the in-process run
        return t.seconds - base.seconds

    def toy_line(key: str) -> str:
        t = toy[key]
        return (f"toy {key} through kfp.local: {t.seconds:.0f} s for {t.rounds} round(s) in {t.segments} "
                f"segment(s), {extra(t) / t.rounds:+.1f} s a round against in process ({base.seconds:.0f} s)")

    starts = ", ".join(f"{k} {v:.1f} s" for k, v in measured["starts"].items())
    io = measured["store"]
    common = [f"start + imports: {starts}; this disk reads {measured['disk']:.2f} GB/s cold; the store "
              f"{io['sync']:.2f} GB/s (write + read, hashed), writes {io['write']:.2f} GB/s, a resident put "
              f"(hash + queue) {io['put']:.2f} GB/s", *sd35.notes]
    rows = []
    if "staged" in toy:
        rows.append(("P4s", "staged: start-up + store I/O / round", extra(toy["staged"]) / toy["staged"].seconds,
                     0.03, sd35.share(sd35.staged),
                     [toy_line("staged"), f"SD3.5-M: {sd35.staged:.0f} GPU-s a round besides {sd35.compute:.0f} of "
                      "compute: every task starts, imports and loads its models; the store traffic synchronous"]))
    fused = toy["fused"]
    fused_notes = [toy_line("fused"),
                   f"fused start-up per segment (toy, measured): {extra(fused) / fused.segments:.1f} s"]
    split = next((k for k in toy if k.startswith("fused-")), None)
    if split:
        two = toy[split]
        fused_notes += [toy_line(split),
                        f"overhead a round at rounds_per_run {fused.rounds // two.segments} / {fused.rounds}: "
                        f"{extra(two) / two.rounds:.1f} s / {extra(fused) / fused.rounds:.1f} s = "
                        f"{extra(two) / extra(fused):.2f} (1 / rounds_per_run: {two.segments / fused.segments:.0f})"]
    fused_notes += [f"SD3.5-M: start-up {sd35.fused_startup:.0f} GPU-s a segment / {sd35.rounds_per_run} rounds = "
                    f"{sd35.fused_startup / sd35.rounds_per_run:.1f} GPU-s a round",
                    f"the round's rollouts with latents, {sd35.rollout_gb:.1f} GB, through the store at its measured "
                    "throughput, paid as follows (share of the fused round with its start-up):"]
    fused_notes += [f"  {mode}: {sd35.fused_io[mode]:.1f} GPU-s, {sd35.share(sd35.fused(mode)):.4f} ({why})"
                    for mode, why in IO_MODES.items()]
    rows.append(("P4f", "fused: start-up + store I/O / round", extra(fused) / fused.seconds, 0.03,
                 sd35.share(sd35.fused()), fused_notes + common))
    throughput = [f"toy {k}: {t.images_per_s:.2f} images/s, {t.per_round:.1f} s/round ({TOY_IMAGES_NOTE})"
                  for k, t in toy.items()]
    throughput += [f"tiny SD3 in process: {sd3.images_per_s:.2f} images/s, {sd3.per_round:.1f} s/round "
                   f"({sd3.images_per_round} images a round, {TOY_IMAGES_NOTE})"]
    throughput += [f"SD3.5-M {name} (projected): {sd35.per_gpu_s(o):.2f} images/GPU-s, {sd35.seconds(o):.0f} s/round "
                   f"on {sd35.gpus} GPUs" for name, o in (("staged", sd35.staged), ("fused", sd35.fused()),
                                                          ("fused, store synchronous", sd35.fused("synchronous")))]
    rows.append(("P4t", "throughput (images per GPU-second)", toy["fused"].images_per_s, None,
                 sd35.per_gpu_s(sd35.fused()), [*throughput, VERL_OMNI]))
    return rows
