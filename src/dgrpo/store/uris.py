"""The one check of a store URI, and the redaction of credentials from anything a person or a log will read.

Every path that takes a store URI calls `check_store_uri`: the CLI's --store, the stage entry points, the update's
worker processes, and the run parameters `dgrpo submit` and `dgrpo schedule` send to the KFP API (which keeps them
in its run records). A URI never carries credentials: those come from the environment, a mounted credentials file
or the pod's identity. Every error message passes through `redact`, so a secret someone typed into a URI is not
printed back, logged or stored.
"""

import re
from urllib.parse import urlparse

from dgrpo.store.base import StoreError

SCHEMES = ("file", "s3")
"""Store URI schemes; a plain path is a local directory."""

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^@\s/'\"<>]*)(?::[^@\s'\"<>]*)?@")
_SECRET_QUERY = re.compile(r"(?P<key>[?&](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|access_token|"
                           r"token|sig|signature|password|secret)=)[^&\s'\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the userinfo of every URI in it (and signature-like query values) replaced by ***.

    A password may contain '/' (AWS secret keys do), which urlparse would read as the start of the path, so the
    pattern takes everything between `scheme://user:` and the next '@' as the password."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}***", text)


def has_userinfo(uri: str) -> bool:
    """Whether `uri` carries a user name or password (`scheme://user:pass@host`), however it is spelled."""
    return bool(_USERINFO.match(uri.strip())) or "@" in urlparse(uri.strip()).netloc


def check_store_uri(uri: str, where: str = "store URI", require_scheme: bool = False) -> str:
    """`uri` if it names a store dgrpo can open, else StoreError naming `where` (with any secret redacted).

    Accepted: a directory path, file:///absolute/path, or s3://bucket[/prefix] (bucket 3 to 63 characters). Refused:
    credentials in the URI, a query or fragment, an unknown scheme, and, with `require_scheme` (a cluster run, whose
    pods do not share this machine's working directory), a bare path."""
    shown = redact(uri)
    if not isinstance(uri, str) or not uri.strip():
        raise StoreError(f"{where}: must not be empty")
    if uri != uri.strip() or any(c in uri for c in "\r\n\t\0"):
        raise StoreError(f"{where} {shown!r}: leading or trailing spaces, or control characters")
    if has_userinfo(uri):
        raise StoreError(f"{where} {shown!r}: credentials do not belong in the store URI; give them through the "
                         "AWS environment variables (in a cluster: a Kubernetes Secret, kubernetes.*.secrets), a "
                         "profile or a mounted credentials file")
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if "://" not in uri:  # a plain path (which may hold a ':')
        if require_scheme:
            raise StoreError(f"{where} {shown!r}: a cluster run needs a store URI its pods reach, e.g. "
                             "s3://bucket/prefix or file:///mnt/store on a shared volume")
        return uri
    if scheme not in SCHEMES:
        raise StoreError(f"{where} {shown!r}: unsupported scheme '{parsed.scheme}' (supported: a local path, "
                         f"{', '.join(s + '://' for s in SCHEMES)})")
    if parsed.query or parsed.fragment or parsed.params:
        raise StoreError(f"{where} {shown!r}: no query or fragment allowed; the S3 endpoint and region come from "
                         "the DGRPO_S3_* environment variables")
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"{where} {shown!r}: a file:// URI names a path on this machine, file:///path (host "
                             f"{parsed.netloc!r} given)")
        if not parsed.path.startswith("/"):
            raise StoreError(f"{where} {shown!r}: expected file:///absolute/path")
        return uri
    bucket = parsed.netloc
    if not 3 <= len(bucket) <= 63 or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]*", bucket):
        raise StoreError(f"{where} {shown!r}: bucket name {bucket!r} must have 3 to 63 characters: letters, "
                         "digits, dots, hyphens and underscores")
    if "//" in parsed.path.strip("/"):
        raise StoreError(f"{where} {shown!r}: empty path segment in prefix")
    return uri
