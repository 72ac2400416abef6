"""create_json: atomic create-if-absent, locally and on a real S3 server, under a race of many writers."""

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from dgrpo.store import LocalStore


def _race(store, key: str, writers: int = 8) -> list[bool]:
    claims = [{"claim": uuid.uuid4().hex} for _ in range(writers)]
    with ThreadPoolExecutor(writers) as pool:
        won = list(pool.map(lambda c: store.create_json(key, c), claims))
    assert json.loads(store._read(key)) == claims[won.index(True)]  # the winner's record, whole
    return won


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_exactly_one_of_many_racing_writers_creates(backend, tmp_path, request):
    store = LocalStore(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_store")
    for trial in range(3):
        assert sum(_race(store, f"runs/x/claim-{trial}.json")) == 1
    assert not store.create_json("runs/x/claim-0.json", {"claim": "late"})
    store.delete("runs/x/claim-0.json")
    assert store.create_json("runs/x/claim-0.json", {"claim": "after release"})
    store.delete("runs/x/never-there.json")  # deleting what is absent is not an error


def test_a_retried_create_that_had_succeeded_counts_as_created(s3_store):
    """botocore retries a PUT whose response was lost; the retry sees 412, and the object holds our bytes."""
    record = {"claim": uuid.uuid4().hex}
    assert s3_store.create_json("runs/y/claim.json", record)
    assert s3_store.create_json("runs/y/claim.json", record)  # the same bytes: our own earlier attempt
    assert not s3_store.create_json("runs/y/claim.json", {"claim": "someone else"})


def test_local_create_leaves_no_temp_files(tmp_path):
    store = LocalStore(tmp_path / "s")
    store.create_json("a/b.json", {"x": 1})
    store.create_json("a/b.json", {"x": 2})
    assert [p.name for p in (tmp_path / "s" / "a").iterdir()] == ["b.json"]
