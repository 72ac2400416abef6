"""The artifact store: `open_store(uri)` for a local directory, a file:// URI or s3://bucket/prefix."""

from urllib.parse import urlparse

from dgrpo.store.base import ArtifactRef, ArtifactStore, StoreError, sha256_bytes, sha256_file
from dgrpo.store.local import LocalStore


def open_store(uri: str) -> ArtifactStore:
    """Open the store at `uri`: a directory path, a file:// URI, or s3://bucket/prefix (see `dgrpo.store.s3`)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return LocalStore(parsed.path if parsed.scheme else uri)
    if parsed.scheme == "s3":
        from dgrpo.store.s3 import S3Store  # boto3 is imported only by runs that use S3

        return S3Store(uri)
    raise StoreError(f"store URI {uri!r}: unsupported scheme '{parsed.scheme}' "
                     "(supported: a local path, file://, s3://)")


__all__ = ["ArtifactRef", "ArtifactStore", "LocalStore", "StoreError", "open_store", "sha256_bytes", "sha256_file"]
