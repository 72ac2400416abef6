"""The math of the methods that are options of the existing stages (docs/algorithms.md):

- `drift`: DRIFT's outlier filter, annealed prompt-embedding noise and diversity-potential reward shaping;
- `progrpo`: Pro-GRPO's Optimal Variance Filtering (the sort-and-split solution) and its prune schedule;
- `gardo`: GARDO's novelty-scaled advantages, uncertainty-gated KL and reference resets.

Pure functions over numpy arrays and tensors, below the stages and above the backbones and the diversity math, so
the stages compose them and the sampler (`dgrpo.models.trajectories`) receives them as plain callables.
"""
