"""The evaluate stage's diversity measures: pixel distance always, embedding distance with cluster.embedder."""

import numpy as np
from support import small_config

from dgrpo import artifacts
from dgrpo.contracts import EVAL_SAMPLES
from dgrpo.diversity import mean_pairwise_distance
from dgrpo.embedders import load_embedder
from dgrpo.images import png_decode
from dgrpo.stages.evaluate import run_evaluate
from dgrpo.stages.shared.context import StageContext

SMALL_EVAL = {"eval.num_steps": 2, "eval.samples_per_prompt": 3}


def test_embedding_diversity_is_the_mean_pairwise_embedding_distance_per_prompt(store):
    ctx = StageContext(small_config(**SMALL_EVAL), store, "eval")
    result = run_evaluate(ctx, 0)
    table = artifacts.read_table(store, result.outputs["samples"], EVAL_SAMPLES)
    images = np.stack([png_decode(b) for b in table.column("image_png").to_pylist()])
    prompts = np.asarray(table.column("prompt").to_pylist())
    emb = load_embedder("toy")(images)
    expected = [mean_pairwise_distance(emb[prompts == p]) for p in dict.fromkeys(prompts.tolist())]
    assert result.metrics["embedding_diversity"] == np.mean(expected) > 0
    record = store.get_json("runs/eval/eval/r0000.json")
    assert [r["embedding_diversity"] for r in record["per_prompt"]] == expected


def test_no_embedder_no_embedding_diversity(store):
    ctx = StageContext(small_config(**SMALL_EVAL, **{"cluster.embedder": None}), store, "eval")
    metrics = run_evaluate(ctx, 0).metrics
    assert "embedding_diversity" not in metrics and metrics["diversity"] > 0
