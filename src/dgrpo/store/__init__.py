"""The artifact store: `open_store(uri)` for a local directory, a file:// URI or s3://bucket/prefix."""

from urllib.parse import unquote, urlparse

from dgrpo.environment import check_environment
from dgrpo.files import file_mode
from dgrpo.store.base import ArtifactRef, ArtifactStore, StoreError, sha256_bytes, sha256_file
from dgrpo.store.local import LocalStore
from dgrpo.store.resident import ResidentStore
from dgrpo.store.uris import check_store_uri, redact


def open_store(uri: str, where: str = "store URI", create: bool = True) -> ArtifactStore:
    """Open the store at `uri`: a directory path, a file:// URI, or s3://bucket/prefix (see `dgrpo.store.s3`).
    `uri` passes `check_store_uri` first; `where` names it in errors (e.g. "--store"); `create` False: a local
    directory must exist already (commands that only read)."""
    check_store_uri(uri, where)
    check_environment()  # a misspelled DGRPO_S3_* variable would send the requests elsewhere
    if "://" not in uri:
        return LocalStore(uri, create=create)
    parsed = urlparse(uri)
    if parsed.scheme.lower() == "s3":
        from dgrpo.store.s3 import S3Store  # boto3 is imported only by runs that use S3

        return S3Store(uri)
    return LocalStore(unquote(parsed.path), create=create)


__all__ = ["ArtifactRef", "ArtifactStore", "LocalStore", "ResidentStore", "StoreError", "check_store_uri", "file_mode",
           "open_store", "redact", "sha256_bytes", "sha256_file"]
