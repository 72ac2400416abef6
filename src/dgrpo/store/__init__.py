"""The artifact store: `open_store(uri)` for a local directory, a file:// URI or s3://bucket/prefix."""

from urllib.parse import unquote, urlparse

from dgrpo.store.base import ArtifactRef, ArtifactStore, StoreError, sha256_bytes, sha256_file
from dgrpo.store.local import LocalStore
from dgrpo.store.uris import check_store_uri, redact


def open_store(uri: str, where: str = "store URI") -> ArtifactStore:
    """Open the store at `uri`: a directory path, a file:// URI, or s3://bucket/prefix (see `dgrpo.store.s3`).
    `uri` passes `check_store_uri` first; `where` names it in errors (e.g. "--store")."""
    check_store_uri(uri, where)
    if "://" not in uri:
        return LocalStore(uri)
    parsed = urlparse(uri)
    if parsed.scheme.lower() == "s3":
        from dgrpo.store.s3 import S3Store  # boto3 is imported only by runs that use S3

        return S3Store(uri)
    return LocalStore(unquote(parsed.path))


__all__ = ["ArtifactRef", "ArtifactStore", "LocalStore", "StoreError", "check_store_uri", "open_store", "redact",
           "sha256_bytes", "sha256_file"]
