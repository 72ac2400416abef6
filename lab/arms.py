"""The arms the experiment compares: the toy presets (package data, `dgrpo.toyworld.presets`), one budget."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from dgrpo_lab.seeds import describe

from dgrpo.config import RunConfig, config_from_json, load_config
from dgrpo.toyworld.data import N_MODES
from dgrpo.toyworld.presets import PRESETS_DIR
from dgrpo.toyworld.reward import MODE_PREFERENCE

PRESETS = {"flowgrpo": "toy-flowgrpo.yaml", "sareg": "toy-sareg.yaml", "bonus": "toy-bonus.yaml",
           "diversegrpo": "toy-diversegrpo.yaml"}
"""The arms `make experiment-toy` runs: the baseline, SA-Reg alone, the bonus alone, both (DiverseGRPO)."""
OPTIONAL_PRESETS = {"diversegrpo-paper": "toy-diversegrpo-paper.yaml", "drift": "toy-drift.yaml",
                    "progrpo": "toy-progrpo.yaml", "gardo": "toy-gardo.yaml"}
"""Run with `--all-arms` (they add about 100% to the experiment's time): DiverseGRPO as the paper has it, without any
of this project's additions (`difference_lines` lists the fields), and the public baselines."""
TARGET_PRESETS: dict[str, str | tuple[str, dict]] = {
    "flowgrpo": "toy-flowgrpo.yaml", "diversegrpo": "toy-diversegrpo.yaml",
    "diversegrpo-beta0.25": ("toy-diversegrpo.yaml", {"cluster.beta": 0.25}),
    "target": "toy-diversegrpo-target.yaml",
    "target-k3": ("toy-diversegrpo-target.yaml", {"train.structure_steps": 3}),
    "target-kauto": ("toy-diversegrpo-target.yaml", {"train.structure_steps": "auto"})}
"""`--target-arms` (docs/experiment.md, "Diversity target"): the baseline, DiverseGRPO at two fixed betas, and
the diversity target at K 1 (the preset's), 3 and auto. An arm is a preset, or a preset with field overrides."""
BASELINE = "flowgrpo"
METHOD = "diversegrpo"
ARM_REFERENCES = {"diversegrpo-paper": METHOD}
"""Arms compared with another arm than the baseline in the differences section: the paper's DiverseGRPO with the
shipped one, so the table says which of this project's additions separate them."""


@dataclass(frozen=True)
class Arm:
    name: str
    config: RunConfig


def build_arms(config_dir: Path = PRESETS_DIR, betas: list[float] | None = None, overrides: dict | None = None,
               presets: dict[str, str | tuple[str, dict]] | None = None) -> list[Arm]:
    """The methods from their presets (in `config_dir`, default the shipped ones), then an optional beta sweep of
    the bonus alone ("bonus-beta<b>").

    Every arm must share the budget (rounds, prompts, batch, learning rate, evaluation, checkpoint): a comparison
    at different budgets says nothing about the methods. The seed is set per run (`with_seed`).
    """
    overrides = overrides or {}
    presets = presets or PRESETS
    arms = [Arm(name, load_config(config_dir / preset_file(spec), overrides | preset_overrides(spec)))
            for name, spec in presets.items()]
    for beta in betas or []:
        arms.append(Arm(f"bonus-beta{beta:g}", load_config(config_dir / PRESETS["bonus"], overrides | {
            "cluster.beta": beta})))
    budget = {(a.config.rounds, a.config.seed, a.config.sampling.group_size, a.config.sampling.prompts_per_round,
               a.config.train.batch_size, a.config.train.learning_rate, tuple(a.config.sampling.prompts),
               tuple(a.config.eval.prompts), a.config.eval.samples_per_prompt, a.config.eval.every,
               a.config.model.pretrained) for a in arms}
    if len(budget) != 1:
        raise ValueError(f"the presets in {config_dir} differ in budget or seeds; the comparison needs one: {budget}")
    return arms


def preset_file(spec: str | tuple[str, dict]) -> str:
    return spec if isinstance(spec, str) else spec[0]


def preset_overrides(spec: str | tuple[str, dict]) -> dict:
    return {} if isinstance(spec, str) else spec[1]


def _leaves(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _leaves(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}


def config_differences(config: RunConfig, reference: RunConfig) -> dict[str, tuple[object, object]]:
    """The named fields (dotted paths, `name` left out) in which `config` differs from `reference`:
    {field: (reference's value, config's value)}, sorted by field."""
    mine, theirs = _leaves(config.to_dict()), _leaves(reference.to_dict())
    return {k: (theirs.get(k), mine.get(k)) for k in sorted(mine.keys() | theirs.keys())
            if k != "name" and mine.get(k) != theirs.get(k)}


def difference_lines(arms: list[Arm], baseline: str = BASELINE) -> list[str]:
    """Markdown: per arm, the named fields in which it differs from the baseline (or its ARM_REFERENCES arm)."""
    by = {a.name: a.config for a in arms}
    lines = ["## How the arms differ", "", "| arm | against | differing fields (against's value -> arm's) |",
             "|---|---|---|"]
    for arm in arms:
        ref = ARM_REFERENCES.get(arm.name, baseline)
        if arm.name == baseline or ref not in by:
            continue
        diff = config_differences(arm.config, by[ref])
        lines.append(f"| {arm.name} | {ref} | "
                     + ("; ".join(f"`{k}`: {a!r} -> {b!r}" for k, (a, b) in diff.items()) or "none") + " |")
    return [*lines, ""]


def with_seed(config: RunConfig, seed: int) -> RunConfig:
    data = config.to_dict()
    data["seed"] = seed
    return config_from_json(json.dumps(data))


def run_id_of(arm: str, config: RunConfig) -> str:
    """Arm, seed and config hash: a finished run is reused only for the very same recipe."""
    return f"experiment-{arm}-s{config.seed}-{config.sha256()[:10]}"


def favoured_mode(config: RunConfig) -> int:
    """The quadrant the run's toy reward favours most (`reward.options.mode_preference`, else `MODE_PREFERENCE`),
    whose share shows the collapse."""
    preference = np.asarray(config.reward.options.get("mode_preference", MODE_PREFERENCE), dtype=np.float64)
    if preference.shape != (N_MODES,) or preference.max() <= 0:
        raise ValueError(f"config field 'reward.options.mode_preference': the experiment compares the arms against "
                         f"one favoured quadrant, so it needs {N_MODES} entries with a positive one; got "
                         f"{preference.tolist()}")
    return int(preference.argmax())


def plan_lines(arms: list[Arm], seeds: list[int] | tuple[int, ...], config_dir: Path = PRESETS_DIR,
               presets: dict[str, str | tuple[str, dict]] | None = None) -> list[str]:
    """What a call would train, without training (`dgrpo experiment --dry-run`): each arm with the preset file it
    is read from, and the seeds by group."""
    presets = presets or PRESETS
    lines = [f"{len(arms)} arms x {len(seeds)} seeds ({describe(seeds)}), {arms[0].config.rounds} rounds each"]
    for arm in arms:
        spec = presets.get(arm.name, PRESETS["bonus"])  # a beta sweep arm is the bonus preset
        changed = " ".join(f"{k}={v}" for k, v in preset_overrides(spec).items())
        lines.append(f"  {arm.name:<18} {config_dir / preset_file(spec)}{' ' + changed if changed else ''}")
    return lines
