"""The orchestration layer: the Kubeflow pipeline factory, the local runner, cluster submission and the `dgrpo`
command line. Nothing here is imported by the library; kfp is imported only by the modules that build pipelines,
so `dgrpo contract` and `dgrpo lineage` run without it."""
