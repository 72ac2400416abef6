"""`dgrpo export`: a fine-tune's adapter as a folder that diffusers loads and the Hugging Face Hub accepts.

A registry or the Hub expects `pytorch_lora_weights.safetensors` (loaded by `pipe.load_lora_weights(folder)`,
which rebuilds the peft config from the file's `lora_adapter_metadata`, written by the update stage) and a model
card, README.md with the Hub's YAML front matter. The card carries what an adapter object named by its sha256
does not: the recipe, the chosen evaluation's metrics and grid, and the lineage back to the base model.

Round numbering is the evaluations': round N is the adapter after N committed rounds (commit N-1); round 0 is
the base model, which has no adapter to export.
"""

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from dgrpo.config import RunConfig, config_from_dict
from dgrpo.models.policy import LORA_METADATA_KEY
from dgrpo.runs import lineage
from dgrpo.runs.commits import read_commit, trained_state
from dgrpo.runs.evaluations import read_best, read_evaluation, read_event
from dgrpo.runs.ownership import read_claim
from dgrpo.runs.records import EvalRecord
from dgrpo.runs.segments import read_chain
from dgrpo.runtime.listing import round_label
from dgrpo.stages.shared.run_config import load_config
from dgrpo.store import ArtifactRef, ArtifactStore, StoreError

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
"""The file name `load_lora_weights(folder)` looks for."""
DIFFUSERS_KINDS = {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}
"""Policy kinds whose adapters are diffusers LoRA adapters, and the pipeline class that loads them."""
LINEAGE_ROUNDS_SHOWN = 10
"""Adapters of the lineage listed at each end of a long fine-tune (one line per round otherwise)."""


@dataclass(frozen=True)
class Chosen:
    """The adapter an export writes: after `round` committed rounds."""

    round: int
    adapter: ArtifactRef
    why: str


def choose(store: ArtifactStore, run_id: str, *, round_: int | None = None, best: bool = False) -> Chosen:
    """The adapter after `round_` completed rounds, the best evaluation's (`best`), or else the last committed."""
    done = trained_state(store, run_id).next_round
    if best:
        record = read_best(store, run_id)
        if record is None:
            raise StoreError(f"fine-tune {run_id}: no best evaluation recorded in {store.uri} (no evaluation yet); "
                             "give --round N")
        if record.round == 0 or record.adapter is None:
            raise ValueError(f"fine-tune {run_id}: the best evaluation ({record.metric} {record.value:.4g}) is "
                             "the base model's: no adapter to export; give --round N")
        return Chosen(record.round, record.adapter, f"the best evaluation by {record.metric} ({record.mode})")
    if round_ is None:
        round_ = done
        why = "the last committed round"
    else:
        why = f"--round {round_}"
    if round_ == 0:
        raise ValueError(f"fine-tune {run_id}: round 0 is the base model (no adapter); export round 1 to {done}"
                         if done else f"fine-tune {run_id}: no committed round in {store.uri}: nothing to export")
    if not 0 < round_ <= done:
        raise ValueError(f"--round {round_}: fine-tune {run_id} has {done} committed rounds (rounds count from 1, "
                         "as evaluations do; 0 is the base model)")
    commit = read_commit(store, run_id, round_ - 1)
    if commit is None:
        raise StoreError(f"fine-tune {run_id}: commit of round {round_} missing in {store.uri}")
    return Chosen(round_, commit.adapter, why)


def evaluated_uses_ema(config: RunConfig) -> bool:
    """Whether the evaluations scored the EMA of the LoRA weights rather than the trained ones."""
    return config.eval.use_ema and config.train.ema_decay > 0


def ema_adapter(store: ArtifactStore, run_id: str, chosen: Chosen) -> ArtifactRef:
    """The EMA of the chosen adapter's weights, which the update stage stores beside it (`ema_adapter`): what the
    evaluations scored when the recipe evaluates the EMA."""
    event = read_event(store, run_id, chosen.round - 1, "update")
    ref = event.output("ema_adapter") if event is not None else None
    if ref is None:
        raise StoreError(f"fine-tune {run_id}: no EMA adapter recorded for round {chosen.round} in {store.uri} "
                         "(the evaluations scored the EMA); --trained exports the trained weights")
    return ref


def run_config(store: ArtifactStore, run_id: str) -> RunConfig:
    """The config the fine-tune trains (its claim's, else its chain record's)."""
    record = read_claim(store, run_id) or read_chain(store, run_id)
    if record is None or not record.config_sha256:
        raise StoreError(f"fine-tune {run_id}: no claim or chain record in {store.uri}; is the run id right?")
    return load_config(store, record.config_sha256)


def non_default_fields(config: RunConfig) -> dict[str, object]:
    """The recipe's fields whose values differ from the defaults, by dotted path."""
    ours, default = _flatten(config.recipe_dict()), _flatten(config_from_dict({}).recipe_dict())
    return {k: v for k, v in ours.items() if default.get(k, object()) != v}


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        out: dict[str, object] = {}
        for k, v in value.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): value}


def adapter_chain(store: ArtifactStore, adapter_sha: str) -> tuple[list[lineage.LineageRecord],
                                                                    lineage.LineageRecord | None]:
    """The adapters from `adapter_sha` back to the first round's (newest first), and the base model's record;
    only lineage records are read, one per round."""
    adapters, base, sha = [], None, adapter_sha
    seen: set[str] = set()
    while sha and sha not in seen:
        seen.add(sha)
        rec = lineage.read_record(store, sha)
        adapters.append(rec)
        sha = next((s for name, s in sorted(rec.inputs.items()) if rec.input_kinds.get(name) == rec.kind), "")
        base_sha = next((s for name, s in rec.inputs.items() if rec.input_kinds.get(name) == "base_model"), "")
        if base_sha:
            base = lineage.read_record(store, base_sha)
    return adapters, base


def export(store: ArtifactStore, run_id: str, out_dir: Path, *, round_: int | None = None,
           best: bool = False, trained: bool = False) -> tuple[Path, Chosen]:
    """Write the diffusers folder of `run_id`'s chosen adapter to `out_dir` (absent or empty), all or nothing: the
    weights the evaluations scored (their EMA where the recipe evaluates the EMA), or with `trained` the trained
    ones as the store holds them."""
    config = run_config(store, run_id)
    if config.model.kind not in DIFFUSERS_KINDS:
        raise ValueError(f"fine-tune {run_id}: model.kind {config.model.kind!r} is not a diffusers backbone "
                         f"({', '.join(DIFFUSERS_KINDS)}): its adapter does not load into a diffusers pipeline")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"-o {out_dir}: exists and is not an empty directory; give a new folder")
    chosen = choose(store, run_id, round_=round_, best=best)
    ema = evaluated_uses_ema(config) and not trained
    weights = store.get(ema_adapter(store, run_id, chosen) if ema else chosen.adapter)  # verified (sha256)
    _check_metadata(weights, chosen.adapter)
    evaluation = read_evaluation(store, run_id, chosen.round)
    base_eval = read_evaluation(store, run_id, 0)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (staging / WEIGHTS_NAME).write_bytes(weights)
        grid = None
        if evaluation is not None and evaluation.grid is not None:
            grid = f"evaluation_{chosen.round:04d}.png"
            (staging / grid).write_bytes(store.get(evaluation.grid))
        adapters, base = adapter_chain(store, chosen.adapter.sha256)
        card = model_card(run_id=run_id, config=config, chosen=chosen, evaluation=evaluation, base_eval=base_eval,
                          grid=grid, adapters=adapters, base=base, store_uri=store.uri, ema=ema)
        (staging / "README.md").write_text(card, encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir, chosen


def _check_metadata(weights: bytes, ref: ArtifactRef) -> None:
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(weights)
        f.flush()
        with safe_open(f.name, framework="pt") as st:
            metadata = st.metadata() or {}
    if LORA_METADATA_KEY not in metadata:
        raise StoreError(f"adapter {ref.sha256[:12]}: no '{LORA_METADATA_KEY}' in its safetensors metadata, so "
                         "diffusers could not rebuild its rank and alpha (written by an older dgrpo?)")


def front_matter(config: RunConfig) -> str:
    """The Hub's model card metadata; a local base path is no Hub id, so it is left as a comment to fill in."""
    from huggingface_hub import ModelCardData

    pretrained = config.model.pretrained
    on_hub = bool(pretrained) and not Path(pretrained).exists() and pretrained.count("/") == 1
    data = ModelCardData(base_model=pretrained if on_hub else None, library_name="diffusers",
                         pipeline_tag="text-to-image",
                         tags=["text-to-image", "diffusers", "lora", "flow-matching", "grpo", "dgrpo",
                               config.model.kind, f"cluster-{config.cluster.method}"])
    lines = [data.to_yaml()]
    if not on_hub:
        lines.append(f"# base_model: <the Hub id of the base weights, trained from {pretrained or 'the toy model'}>")
    lines.append("# license: <set the license the base model's terms allow, e.g. other + license_name>")
    return "---\n" + "\n".join(lines) + "\n---\n"


def model_card(*, run_id: str, config: RunConfig, chosen: Chosen, evaluation: EvalRecord | None,
               base_eval: EvalRecord | None, grid: str | None, adapters: list[lineage.LineageRecord],
               base: lineage.LineageRecord | None,
               store_uri: str, ema: bool = False) -> str:
    """README.md of the export: front matter, usage, the evaluation, the recipe and the lineage."""
    pipeline = DIFFUSERS_KINDS[config.model.kind]
    label = round_label(chosen.round)
    summary = (f"A `{config.name}` fine-tune ({config.model.kind}, cluster method {config.cluster.method}, LoRA "
               f"rank {config.lora.rank}, alpha {config.lora.alpha}) trained by dgrpo; this is the adapter after "
               f"{label} ({chosen.why}), object `{chosen.adapter.sha256}` of `{store_uri}`"
               + (f", with its weights replaced by their EMA (decay {config.train.ema_decay}, every "
                  f"{config.train.ema_every} steps): the weights the evaluations scored." if ema else ".")
               + (" These are the trained weights; the evaluations below scored their EMA."
                  if evaluated_uses_ema(config) and not ema else ""))
    load = f"{pipeline}.from_pretrained({config.model.pretrained!r}, torch_dtype=torch.{config.model.dtype})"
    out = [front_matter(config), f"# {run_id}: LoRA adapter after {label} of {config.rounds}", "", summary, "",
           "## Use", "", "```python", "import torch", f"from diffusers import {pipeline}", "", f"pipe = {load}",
           "pipe.load_lora_weights(\"path/to/this/folder\")", "```", ""]
    out += _evaluation_section(chosen, evaluation, base_eval, grid)
    fields = non_default_fields(config)
    out += ["## Recipe", "", f"Recipe sha256 `{config.recipe_sha256()}`; the fields that differ from dgrpo's "
            "defaults (everything else is the default):", "", "| field | value |", "|---|---|"]
    out += [f"| `{k}` | `{_short(v)}` |" for k, v in sorted(fields.items())] or ["| (none) | |"]
    out += ["", *_lineage_section(adapters, base)]
    return "\n".join(out) + "\n"


def _evaluation_section(chosen: Chosen, evaluation: EvalRecord | None, base_eval: EvalRecord | None,
                        grid: str | None) -> list[str]:
    if evaluation is None:
        return ["## Evaluation", "", f"No evaluation ran after {round_label(chosen.round)} (eval.every); see the "
                "fine-tune's report for the evaluated rounds.", ""]
    reward = evaluation.reward or {}
    out = ["## Evaluation", "", f"Scored by reward `{reward.get('name', '?')}` ({reward.get('why', '')}); "
           f"columns: the base model and {round_label(chosen.round)}.", "",
           f"| metric | base | {round_label(chosen.round)} |", "|---|---|---|"]
    base_metrics = base_eval.metrics if base_eval is not None else {}
    for key, value in sorted(evaluation.metrics.items()):
        before = f"{base_metrics[key]:.4g}" if key in base_metrics else "-"
        out.append(f"| {key} | {before} | {value:.4g} |")
    if grid:
        prompts = ", ".join(f"\"{p['prompt']}\"" + (" (held out)" if p.get("held_out") else "")
                            for p in evaluation.per_prompt)
        out += ["", f"![evaluation images after {round_label(chosen.round)}]({grid})", "",
                f"One row per prompt ({prompts}); evaluation seed "
                f"{evaluation.eval_seed if evaluation.eval_seed is not None else '?'}, deterministic "
                "sampling."]
    return out + [""]


def _lineage_section(adapters: list[lineage.LineageRecord], base: lineage.LineageRecord | None) -> list[str]:
    out = ["## Lineage", "", "Each adapter was trained from the one below it (`dgrpo lineage SHA` prints the full "
           "graph: rollouts, rewards, scores and config).", ""]
    shown = adapters
    if len(adapters) > 2 * LINEAGE_ROUNDS_SHOWN:
        shown = adapters[:LINEAGE_ROUNDS_SHOWN] + [None] + adapters[-LINEAGE_ROUNDS_SHOWN:]  # type: ignore[list-item]
    for rec in shown:
        if rec is None:
            out.append(f"- ... {len(adapters) - 2 * LINEAGE_ROUNDS_SHOWN} more rounds ...")
            continue
        done = rec.round + 1 if rec.round is not None else "?"
        out.append(f"- {round_label(done) if isinstance(done, int) else 'round ?'}: adapter `{rec.sha256[:12]}` "
                   f"({rec.stage}, run {rec.run_id}, config `{rec.config_sha256[:12]}`, code {rec.code_version}"
                   + (f", image {rec.image}" if rec.image else "") + ")")
    if base is not None:
        out.append(f"- base: model `{base.uri}` (sha256 `{base.sha256}`)")
    return out


def _short(value: object, limit: int = 120) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


__all__ = ["DIFFUSERS_KINDS", "WEIGHTS_NAME", "Chosen", "adapter_chain", "choose", "ema_adapter", "evaluated_uses_ema",
           "export", "front_matter", "model_card", "non_default_fields", "run_config"]
