"""Where a table's shard index lives: `Provenance.shard` now, `seeds["shard"]` in records written before it."""

import pyarrow as pa

from dgrpo import contracts
from dgrpo.runs import lineage
from dgrpo.runs.keys import lineage_key
from dgrpo.runs.lineage import Provenance
from dgrpo.stages.shared.shards import read_merged, recorded_shard, shard_of
from dgrpo.store import ArtifactRef

SPEC = contracts.Contract(name="shard_test", version=1, description="the columns a shard merge checks",
                          schema=pa.schema([pa.field(c, pa.string(), nullable=False)
                                            for c in ("sample_id", "group_id")]))


def _put(store, shard: int, old_style: bool) -> ArtifactRef:
    """A two-row table of shard `shard`; `old_style`: its lineage record as written before `Provenance.shard` (no
    shard fields, the index in `seeds`)."""
    table = pa.table({"sample_id": [f"s{shard}-0", f"s{shard}-1"], "group_id": [f"g{shard}"] * 2})
    ref = store.put(contracts.to_parquet_bytes(table, SPEC, "test"), kind=SPEC.name, suffix=".parquet")
    if old_style:
        record = lineage.record(store, ref, Provenance("rollout", "r", "0" * 64, round=0))
        data = {k: v for k, v in vars(record).items() if k not in ("shard", "shards")}
        store.put_json(lineage_key(ref.sha256), data | {"seeds": {"first_sample_seed": 7, "shard": shard,
                                                                         "shards": 3}})
    else:
        lineage.record(store, ref, Provenance("rollout", "r", "0" * 64, round=0, shard=shard, shards=3))
    return ref


def test_the_shard_is_a_field_of_the_record_not_a_seed(store):
    ref = _put(store, 2, old_style=False)
    rec = lineage.read_record(store, ref.sha256)
    assert (rec.shard, rec.shards, rec.seeds) == (2, 3, {})
    assert shard_of(store, ref) == 2


def test_a_record_written_before_the_field_still_gives_its_shard(store):
    ref = _put(store, 1, old_style=True)
    assert "shard" not in store.get_json(lineage_key(ref.sha256))
    assert recorded_shard(lineage.read_record(store, ref.sha256)) == (1, 3)
    assert shard_of(store, ref) == 1


def test_shards_merge_in_shard_order_whichever_record_style(store):
    refs = [_put(store, 2, old_style=False), _put(store, 0, old_style=True), _put(store, 1, old_style=False)]
    merged = read_merged(store, refs, SPEC)
    assert merged.column("group_id").to_pylist() == ["g0", "g0", "g1", "g1", "g2", "g2"]


def test_an_unsharded_record_has_no_shard(store):
    ref = store.put(b"{}", kind="blob", suffix=".json")
    lineage.record(store, ref, Provenance("reward", "r", "0" * 64, round=0))
    assert recorded_shard(lineage.read_record(store, ref.sha256)) == (None, None)
    assert shard_of(store, ref) == 0
