"""The training pipeline factory, the local runner and the `dgrpo` command line."""

from dgrpo_pipelines.training import build_pipeline, compile_pipeline

__all__ = ["build_pipeline", "compile_pipeline"]
