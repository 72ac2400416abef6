"""Kubeflow lightweight components: one thin wrapper per stage around `dgrpo.stages` (`stages`), and the Parquet
adapters around a swapped-in stage (`exchange`)."""
