"""Shared fixtures: a stage context on the small run config (tests/support.py), a temporary store, and a real S3
server."""

import os
import uuid

# One torch thread count for this process and every subprocess it starts (kfp.local tasks, torchrun workers):
# CPU kernels may split a reduction differently for another thread count, and the equivalence tests compare
# results across those processes bit for bit. One thread per pytest-xdist worker (`make test` runs two): two
# workers of two threads each on 2 cores would oversubscribe them.
TORCH_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(TORCH_THREADS)
# The suite's image references: not the ghcr.io/dgrpo placeholders, which `dgrpo submit` refuses; the fake KFP
# server pulls nothing (tests that check the placeholders set their own registry).
os.environ.setdefault("DGRPO_IMAGE_REGISTRY", "registry.test.invalid/dgrpo")

import pytest  # noqa: E402
import seaweedfs  # noqa: E402
import torch  # noqa: E402
from support import S3_BUCKET, small_config  # noqa: E402

from dgrpo.stages.shared.context import StageContext  # noqa: E402
from dgrpo.store import LocalStore  # noqa: E402
from dgrpo.store.s3 import S3Store  # noqa: E402

torch.set_num_threads(TORCH_THREADS)


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture
def ctx(store):
    return StageContext(small_config(), store, "test-run")


@pytest.fixture
def kfp_api():
    """A strict fake of the KFP v2beta1 REST API on a local port (tests/kfp_fake.py), with its recorded requests."""
    from kfp_fake import FakeKfp

    fake = FakeKfp()
    yield fake
    fake.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS on 127.0.0.1 with bucket S3_BUCKET; its endpoint and credentials file are in the environment
    (inherited by kfp.local's task subprocesses) for the whole session."""
    server = seaweedfs.start(tmp_path_factory.mktemp("seaweedfs"))
    patch = pytest.MonkeyPatch()
    try:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "DGRPO_S3_ADDRESSING_STYLE"):
            patch.delenv(key, raising=False)
        for key, value in server.env().items():
            patch.setenv(key, value)
        server.client().create_bucket(Bucket=S3_BUCKET)
        yield server
    finally:
        patch.undo()
        server.stop()


@pytest.fixture
def s3_store(s3_server):
    """An empty store under a fresh prefix of the test bucket."""
    return S3Store(f"s3://{S3_BUCKET}/t-{uuid.uuid4().hex[:10]}")
