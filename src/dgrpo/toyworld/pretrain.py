"""Pre-train the toy model with flow matching, then check it reproduces the data's mode balance.

Run `python -m dgrpo.toyworld.pretrain`; it writes the checkpoint shipped as the package's toy base model
and a JSON report next to it. The base model must be diverse (all quadrants, high mode entropy) so that
the mode collapse that GRPO causes later is visible against it.
"""

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import SD3Transformer2DModel

from dgrpo.files import atomic_write_text
from dgrpo.toyworld.data import (
    CAPTIONS,
    COLORS,
    N_MODES,
    SHAPES,
    classify_color,
    classify_mode,
    foreground_mask,
    sample_batch,
)
from dgrpo.toyworld.model import (
    DEFAULT_CHECKPOINT,
    ToyTextEncoder,
    build_transformer,
    count_parameters,
    save_checkpoint,
)
from dgrpo.toyworld.reward import shape_iou, toy_quality

CAPTION_DROPOUT = 0.1
WARMUP_STEPS = 200
EVAL_STEPS = 20
EVAL_CFG_SCALES = (1.5, 3.0, 4.5)
MIN_COLOR_CORRECT = 0.95


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; defaults reproduce the shipped checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--samples-per-caption", type=int, default=64)
    parser.add_argument("--cfg-scales", type=float, nargs="+", default=list(EVAL_CFG_SCALES))
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def predict_velocity(transformer: SD3Transformer2DModel, text_encoder: ToyTextEncoder, x_t: torch.Tensor,
                     t: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Rectified-flow velocity eps - x0 at x_t = (1 - t) x0 + t eps, SD3 calling convention."""
    prompt_embeds, pooled = text_encoder(captions)
    return transformer(hidden_states=x_t, encoder_hidden_states=prompt_embeds, pooled_projections=pooled,
                       timestep=t * 1000).sample


def flow_matching_loss(transformer: SD3Transformer2DModel, text_encoder: ToyTextEncoder, x0: torch.Tensor,
                       captions: list[str]) -> torch.Tensor:
    """MSE of the predicted velocity, with logit-normal t as in SD3."""
    eps = torch.randn_like(x0)
    t = torch.sigmoid(torch.randn(len(x0)))
    x_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * eps
    return F.mse_loss(predict_velocity(transformer, text_encoder, x_t, t, captions), eps - x0)


def lr_lambda(step: int, total: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, total - WARMUP_STEPS)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _training_captions(caption_idx: np.ndarray, rng: np.random.Generator) -> list[str]:
    drop = rng.random(len(caption_idx)) < CAPTION_DROPOUT
    return ["" if d else CAPTIONS[i] for i, d in zip(caption_idx, drop, strict=True)]


def train(transformer: SD3Transformer2DModel, text_encoder: ToyTextEncoder, args: argparse.Namespace
          ) -> list[float]:
    """Train both modules in place; returns the per-step losses."""
    rng = np.random.default_rng(args.seed)
    params = [*transformer.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, args.steps))
    transformer.train()
    text_encoder.train()
    losses: list[float] = []
    for step in range(args.steps):
        images, caption_idx, _ = sample_batch(args.batch_size, rng)
        loss = flow_matching_loss(transformer, text_encoder, torch.from_numpy(images),
                                  _training_captions(caption_idx, rng))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if (step + 1) % 250 == 0 or step == 0:
            print(f"step {step + 1:5d}/{args.steps}  loss {np.mean(losses[-250:]):.4f}", flush=True)
    transformer.eval()
    text_encoder.eval()
    return losses


@torch.no_grad()
def euler_sample(transformer: SD3Transformer2DModel, text_encoder: ToyTextEncoder, captions: list[str], *,
                 cfg_scale: float, num_steps: int = EVAL_STEPS, seed: int = 0) -> np.ndarray:
    """Deterministic Euler ODE sampling from t=1 to 0 with CFG; images [n,3,16,16] clipped to [-1,1]."""
    n = len(captions)
    x = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    batch_captions = list(captions) if cfg_scale == 1.0 else [""] * n + list(captions)
    sigmas = torch.linspace(1.0, 0.0, num_steps + 1)
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x_in = x if cfg_scale == 1.0 else torch.cat([x, x])
        v = predict_velocity(transformer, text_encoder, x_in, sigma.expand(len(x_in)), batch_captions)
        if cfg_scale != 1.0:
            v_uncond, v_cond = v.chunk(2)
            v = v_uncond + cfg_scale * (v_cond - v_uncond)
        x = x + (sigma_next - sigma) * v
    return x.clamp(-1.0, 1.0).numpy()


def _normalised_entropy(shares: np.ndarray) -> float:
    p = shares[shares > 0] / shares.sum() if shares.sum() > 0 else np.zeros(0)
    return float(-(p * np.log(p)).sum() / math.log(N_MODES))


def caption_metrics(images: np.ndarray, caption: str) -> dict[str, Any]:
    """Colour/shape correctness, mode histogram, normalised mode entropy and quality for one caption."""
    color, shape = caption.split()[1:]
    n = len(images)
    modes = classify_mode(images)
    hist = np.bincount(modes + 1, minlength=N_MODES + 1)
    mask = foreground_mask(images)
    own = shape_iou(mask, np.full(n, SHAPES.index(shape)))
    other = shape_iou(mask, np.full(n, 1 - SHAPES.index(shape)))
    return {
        "color_correct": float((classify_color(images) == COLORS.index(color)).mean()),
        "shape_correct": float(((own > other) & (modes >= 0)).mean()),
        "mode_shares": [float(v) for v in hist[1:] / n] + [float(hist[0] / n)],
        "mode_entropy": _normalised_entropy(hist[1:].astype(np.float64)),
        "quality": float(toy_quality(images, [caption] * n).mean()),
    }


def evaluate(transformer: SD3Transformer2DModel, text_encoder: ToyTextEncoder, *, cfg_scale: float,
             samples_per_caption: int, seed: int) -> dict[str, Any]:
    """Sample every caption and measure it against the data (uniform modes, right colours and shapes)."""
    captions = [c for c in CAPTIONS for _ in range(samples_per_caption)]
    images = euler_sample(transformer, text_encoder, captions, cfg_scale=cfg_scale, seed=seed)
    per_caption = {c: caption_metrics(images[i * samples_per_caption:(i + 1) * samples_per_caption], c)
                   for i, c in enumerate(CAPTIONS)}
    keys = ("color_correct", "shape_correct", "mode_entropy", "quality")
    mean = {k: float(np.mean([m[k] for m in per_caption.values()])) for k in keys}
    mean["min_quadrant_share"] = float(min(min(m["mode_shares"][:N_MODES]) for m in per_caption.values()))
    return {"cfg_scale": cfg_scale, "num_steps": EVAL_STEPS, "sampler": "euler_ode_uniform_sigmas",
            "samples_per_caption": samples_per_caption, "seed": seed, "mean": mean,
            "per_caption": per_caption}


def choose_evaluation(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Best quality + entropy among CFG scales with right colours and every quadrant present."""
    def ok(r: dict[str, Any]) -> bool:
        return r["mean"]["color_correct"] >= MIN_COLOR_CORRECT and r["mean"]["min_quadrant_share"] > 0

    pool = [r for r in results if ok(r)] or results
    return max(pool, key=lambda r: r["mean"]["quality"] + r["mean"]["mode_entropy"])


def format_table(evaluation: dict[str, Any]) -> str:
    """Plain-text per-caption table of the chosen evaluation."""
    quads = " ".join(f"{name:>5}" for name in ("TL", "TR", "BL", "BR", "none"))
    head = f"{'caption':<16} {'colour':>6} {'shape':>6} {quads} {'H/logK':>6} {'quality':>7}"
    rows = [head, "-" * len(head)]
    for caption, m in evaluation["per_caption"].items():
        shares = " ".join(f"{s:5.2f}" for s in m["mode_shares"])
        rows.append(f"{caption:<16} {m['color_correct']:6.2f} {m['shape_correct']:6.2f} {shares} "
                    f"{m['mode_entropy']:6.3f} {m['quality']:7.3f}")
    mean = evaluation["mean"]
    rows.append(f"{'mean':<16} {mean['color_correct']:6.2f} {mean['shape_correct']:6.2f} {'':29} "
                f"{mean['mode_entropy']:6.3f} {mean['quality']:7.3f}")
    return "\n".join(rows)


def _sweep_summary(results: list[dict[str, Any]]) -> list[dict[str, float]]:
    return [{"cfg_scale": r["cfg_scale"], **r["mean"]} for r in results]


def build_report(args: argparse.Namespace, losses: list[float], param_counts: dict[str, int],
                 train_seconds: float, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The report stored in the checkpoint metadata and the JSON file."""
    curve = [[s, float(np.mean(losses[max(0, s - 250):s]))] for s in range(250, len(losses) + 1, 250)]
    return {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": WARMUP_STEPS,
        "seed": args.seed, "caption_dropout": CAPTION_DROPOUT, "timestep_sampling": "logit_normal(0, 1)",
        "final_loss": float(np.mean(losses[-100:])), "loss_curve": curve, "param_count": param_counts,
        "train_seconds": round(train_seconds, 1), "threads": args.threads,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "cfg_sweep": _sweep_summary(results), "eval": choose_evaluation(results),
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate a few CFG scales, save checkpoint + JSON report, print the table."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    transformer, text_encoder = build_transformer(), ToyTextEncoder()
    counts = {"transformer": count_parameters(transformer), "text_encoder": count_parameters(text_encoder)}
    counts["total"] = counts["transformer"] + counts["text_encoder"]
    print(f"parameters: {counts}", flush=True)
    start = time.perf_counter()
    losses = train(transformer, text_encoder, args)
    train_seconds = time.perf_counter() - start
    results = [evaluate(transformer, text_encoder, cfg_scale=s, samples_per_caption=args.samples_per_caption,
                        seed=args.seed + 1) for s in args.cfg_scales]
    report = build_report(args, losses, counts, train_seconds, results)
    save_checkpoint(args.out, transformer, text_encoder, report)
    _write_json(args.out.with_suffix(".json"), report)
    for row in report["cfg_sweep"]:
        print(" ".join(f"{k}={v:.3f}" for k, v in row.items()))
    print(f"chosen cfg_scale={report['eval']['cfg_scale']}, {EVAL_STEPS} Euler steps; "
          f"trained {args.steps} steps in {train_seconds:.0f}s\n{format_table(report['eval'])}")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return report


if __name__ == "__main__":
    main()
