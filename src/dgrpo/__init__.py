"""dgrpo: DiverseGRPO on the Flow-GRPO recipe for flow-matching text-to-image models.

The library holds the stage logic as plain functions (no orchestration imports); `dgrpo_components` wraps
each stage as a Kubeflow component and `dgrpo_pipelines` assembles the training pipeline.
"""

__version__ = "0.1.0"
