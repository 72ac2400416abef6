"""Tuning seeds against evaluation seeds: the presets were tuned on seeds 0-2 (docs/experiment.md, "What was tried"),
so only other seeds can confirm a goal; the summary keeps the two groups apart and the goals read the evaluation
seeds alone."""

TUNING_SEEDS = (0, 1, 2)
"""The seeds the shipped presets were chosen on: their results are reported, never used to decide a goal."""
EVALUATION_SEEDS = (3, 4, 5, 6, 7)
"""The seeds no preset was chosen on (`--seeds evaluation`): the goals are decided on these."""
DEFAULT_SEEDS = TUNING_SEEDS
"""What `dgrpo experiment` trains without --seed/--seeds: the three seeds `make experiment-toy` has always run."""
SEED_CHOICES = {"tuning": TUNING_SEEDS, "evaluation": EVALUATION_SEEDS, "all": TUNING_SEEDS + EVALUATION_SEEDS}
"""`--seeds` names a group (or both)."""
GROUPS = ("evaluation", "tuning")
"""The order the report shows the groups in: the deciding one first."""


def seed_group(seed: int) -> str:
    """"tuning" for a seed the presets were tuned on, else "evaluation" (any other seed is fresh to them)."""
    return "tuning" if seed in TUNING_SEEDS else "evaluation"


def seeds_for(choice: str) -> tuple[int, ...]:
    """The seeds of `--seeds CHOICE`; an unknown choice is an error naming the known ones."""
    if choice not in SEED_CHOICES:
        raise ValueError(f"--seeds {choice!r}: choose one of {', '.join(SEED_CHOICES)}")
    return SEED_CHOICES[choice]


def describe(seeds: list[int] | tuple[int, ...]) -> str:
    """The seeds by group, as the report's header and the log print them: "tuning 0 1 2; evaluation 3 4"."""
    parts = [f"{group} {' '.join(str(s) for s in seeds if seed_group(s) == group)}" for group in GROUPS[::-1]
             if any(seed_group(s) == group for s in seeds)]
    return "; ".join(parts)
