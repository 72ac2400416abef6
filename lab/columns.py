"""What the experiment's tables hold: per evaluation, per run, and per arm over seeds."""

SPLITS = ("heldout", "train")
METRICS = ("quality", "reward", "mode_entropy", "modes_over_10pct", "favoured_share", "embedding_diversity", "vendi")
SIGNAL = ("rollout_mode_share", "rollout_quality_share", "rollout_cluster_quality_share", "rollout_quality_favoured",
          "rollout_quality_others")
"""What the update learned from in the rounds before an evaluation, and where it improved (`rollout_signal`): the
shares of the final reward's in-group variance that the quadrant explains and that the mode-independent quality
explains, over the samples the update trains on (GARDO's novelty weighting of the advantage is not in the final
reward, so not here); the quality's share of the variance within the groups' clusters (what the detail steps learn
from under train.detail_baseline "cluster"; the in-group share where nothing was clustered); and the mean quality
of all the rollouts in the favoured quadrant and in the other three."""
MEASURES = [*(f"{s}_{m}" for s in SPLITS for m in METRICS), *SIGNAL]
"""Every measure of one evaluation row."""
COLUMNS = ["arm", "seed", "seed_group", "round", *MEASURES]
"""experiment.csv: one row per run and evaluation; `seed_group` says whether the seed is a tuning seed."""
MATCH_KEY = "train_quality"
"""The quality that defines matched quality: mode-independent, on the training captions."""
FINAL = ("train_quality", "train_quality_gain", "heldout_quality", "heldout_quality_gain", "heldout_reward",
         "heldout_mode_entropy", "train_mode_entropy", "heldout_modes_over_10pct", "train_modes_over_10pct",
         "heldout_favoured_share", "train_favoured_share", "heldout_embedding_diversity", "train_embedding_diversity",
         "heldout_vendi", "train_vendi", *SIGNAL)
MATCHED = ("heldout_mode_entropy", "train_mode_entropy", "heldout_modes_over_10pct", "train_modes_over_10pct",
           "heldout_embedding_diversity", "train_embedding_diversity", "heldout_vendi", "train_vendi")
COST = ("rollout_nfe_per_round", "wall_s")
"""Per run: the rollout's transformer evaluations per round (summed over shards; Pro-GRPO's pruning lowers it) and
the seconds its training took in the experiment (every run of one call shares its jobs x threads)."""
