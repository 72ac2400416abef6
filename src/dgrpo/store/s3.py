"""The artifact store on S3 or an S3-compatible object store (SeaweedFS, MinIO, Ceph), through boto3.

`open_store("s3://bucket/prefix")` opens it. The URI names only where the objects are; how to reach the
endpoint comes from `S3Settings` (environment variables, documented on each field), and the credentials only
from botocore's standard chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (e.g. from a Kubernetes Secret), a
mounted shared-credentials file (AWS_SHARED_CREDENTIALS_FILE), a profile, web identity (IRSA) or instance
metadata. A URI carrying credentials is refused, so none can end up in a pipeline spec.

Every write is one PUT, or one multipart upload that becomes visible only when completed, so readers see a
whole object or none; object keys are content hashes, and `ArtifactStore.get` checks the hash on read.
"""

import io
import os
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from dgrpo.environment import check_environment
from dgrpo.store.base import ArtifactStore, StoreError, sha256_bytes
from dgrpo.store.uris import check_store_uri, has_userinfo, redact

MiB = 1 << 20
ADDRESSING_STYLES = ("path", "virtual", "auto")
RETRY_MODES = ("standard", "adaptive")
_MISSING = {"404", "NoSuchKey", "NotFound"}


LIMITS = {"multipart_threshold_mb": (5, 5 << 20), "multipart_chunk_mb": (5, 5 << 10), "max_concurrency": (1, 64),
          "max_attempts": (1, 100), "connect_timeout_s": (1, 600), "read_timeout_s": (1, 3600),
          "request_deadline_s": (1, 3600)}
"""Inclusive bounds of the numeric settings: S3's part sizes (5 MiB to 5 GiB, objects up to 5 TiB), and attempts
and timeouts that keep one blocked request from stalling a stage for hours."""
DOWNLOAD_ATTEMPTS = 2
"""GETs per download: s3transfer re-issues a GET whose body broke off mid-stream; each GET is one request."""
MAX_BACKOFF_S = 20
"""botocore's cap on the sleep between two attempts (standard and adaptive modes)."""


def _env_int(name: str, default: int, field_name: str) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError as exc:
        raise StoreError(f"environment variable {name}={raw!r}: expected an integer") from exc
    lo, hi = LIMITS[field_name]
    if not lo <= value <= hi:
        raise StoreError(f"environment variable {name}={raw!r}: must be between {lo} and {hi}")
    return value


@dataclass(frozen=True)
class S3Settings:
    """How to reach the object store; never credentials (those come from botocore's standard chain)."""

    endpoint_url: str | None = None
    """DGRPO_S3_ENDPOINT_URL: the S3 API endpoint of a non-AWS store, e.g. http://seaweedfs.kubeflow:8333.
    Unset: botocore's own resolution (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile, then AWS)."""
    region: str | None = None
    """DGRPO_S3_REGION: the bucket's region; unset falls back to AWS_REGION / AWS_DEFAULT_REGION / the profile.
    S3-compatible stores accept any value, and SigV4 signing needs one, so us-east-1 is used when none is set."""
    addressing_style: str = "auto"
    """DGRPO_S3_ADDRESSING_STYLE: path (http://host/bucket/key), virtual (http://bucket.host/key) or auto.
    Default: path when a custom endpoint is configured (in-cluster stores have no per-bucket DNS), else auto."""
    multipart_threshold_mb: int = 64
    """DGRPO_S3_MULTIPART_THRESHOLD_MB: objects at least this large are uploaded and downloaded in parts."""
    multipart_chunk_mb: int = 16
    """DGRPO_S3_MULTIPART_CHUNK_MB: part size (S3's minimum is 5 MiB); up to 10,000 parts per object."""
    max_concurrency: int = 4
    """DGRPO_S3_MAX_CONCURRENCY: parts in flight at once for one large object."""
    max_attempts: int = 20
    """DGRPO_S3_MAX_ATTEMPTS: tries per request, including the first; throttling (SlowDown, 503), 5xx and
    connection errors are retried with botocore's backoff: full jitter below a cap that doubles from 50 ms (1 s
    for throttling) to 20 s. A restarting server answers 500 or refuses connections for seconds to a minute; 8
    tries ride out about 3 s of that, 20 about 110 s on average (70 s in 99 runs of 100), so the deadline below,
    not the count, ends the retries of an outage. Requests failing together end sooner: botocore's retry quota
    (500 units per client, 14 per retried error, returned on success) lasts about 35 retries in all, so the 4
    parts of a multipart transfer ride out about 13 s."""
    retry_mode: str = "standard"
    """DGRPO_S3_RETRY_MODE: botocore's retry mode: standard, or adaptive (also rate-limits the client)."""
    connect_timeout_s: int = 10
    """DGRPO_S3_CONNECT_TIMEOUT_S: seconds to open a connection before it counts as a (retried) failure."""
    read_timeout_s: int = 60
    """DGRPO_S3_READ_TIMEOUT_S: seconds without data on an open connection before the request is retried."""
    request_deadline_s: int = 120
    """DGRPO_S3_REQUEST_DEADLINE_S: no request is retried once this long has passed since its first attempt, so a
    server that accepts connections and never answers blocks one request for at most `max_block_s()` (about 3.5
    minutes with the defaults), not max_attempts x read_timeout_s plus backoff."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Further botocore Config arguments, for callers that build settings in code (not read from the env)."""

    @classmethod
    def from_env(cls) -> "S3Settings":
        check_environment()  # a misspelled endpoint variable would otherwise fall back to AWS without a word
        endpoint = os.environ.get("DGRPO_S3_ENDPOINT_URL") or None
        custom = bool(endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
        settings = cls(
            endpoint_url=endpoint,
            region=os.environ.get("DGRPO_S3_REGION") or None,
            addressing_style=os.environ.get("DGRPO_S3_ADDRESSING_STYLE") or ("path" if custom else "auto"),
            retry_mode=os.environ.get("DGRPO_S3_RETRY_MODE") or cls.retry_mode,
            **{name: _env_int(f"DGRPO_S3_{name.upper()}", getattr(cls, name), name) for name in LIMITS},
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.addressing_style not in ADDRESSING_STYLES:
            raise StoreError(f"DGRPO_S3_ADDRESSING_STYLE={self.addressing_style!r}: expected one of "
                             f"{', '.join(ADDRESSING_STYLES)}")
        if self.retry_mode not in RETRY_MODES:
            raise StoreError(f"DGRPO_S3_RETRY_MODE={self.retry_mode!r}: expected one of {', '.join(RETRY_MODES)}")
        for name, (lo, hi) in LIMITS.items():
            if not lo <= getattr(self, name) <= hi:
                raise StoreError(f"DGRPO_S3_{name.upper()}={getattr(self, name)}: must be between {lo} and {hi}"
                                 + (" (S3 parts are at least 5 MiB)" if name == "multipart_chunk_mb" else ""))
        if self.endpoint_url:
            shown = redact(self.endpoint_url)
            if has_userinfo(self.endpoint_url):
                raise StoreError(f"DGRPO_S3_ENDPOINT_URL={shown!r}: credentials do not belong in the endpoint URL; "
                                 "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from a Kubernetes Secret "
                                 "(kubernetes.*.secrets) or mount a credentials file")
            if urlparse(self.endpoint_url).scheme not in ("http", "https"):
                raise StoreError(f"DGRPO_S3_ENDPOINT_URL={shown!r}: expected an http(s):// URL")

    def max_block_s(self) -> float:
        """The longest one S3 request can block: attempts start until the deadline has passed, the last one may
        wait for its connection and its answer, plus botocore's longest backoff sleep before it. (A download is up
        to DOWNLOAD_ATTEMPTS such requests, a multipart transfer one per part.)"""
        return self.request_deadline_s + MAX_BACKOFF_S + self.connect_timeout_s + self.read_timeout_s

    def botocore_config(self) -> Config:
        return Config(s3={"addressing_style": self.addressing_style},
                      retries={"total_max_attempts": self.max_attempts, "mode": self.retry_mode},
                      connect_timeout=self.connect_timeout_s, read_timeout=self.read_timeout_s, **self.extra)

    def transfer_config(self) -> TransferConfig:
        return TransferConfig(multipart_threshold=self.multipart_threshold_mb * MiB,
                              multipart_chunksize=self.multipart_chunk_mb * MiB,
                              max_concurrency=self.max_concurrency, use_threads=self.max_concurrency > 1,
                              num_download_attempts=DOWNLOAD_ATTEMPTS)


def _stop_retrying_after(deadline_s: float, client: Any) -> None:
    """Give every request of `client` a deadline: its attempts stop once `deadline_s` have passed since the first.

    botocore asks every `needs-retry` handler in turn and sleeps for the first answer that is not None; ours runs
    first and answers False (do not retry) past the deadline, else None, leaving the decision to botocore's own
    retry handler. The clock starts at `before-call`, once per request, in the context its attempts share."""
    def start(context: dict, **_: Any) -> None:
        context["dgrpo_started"] = time.monotonic()

    def past_deadline(request_dict: dict, **_: Any) -> bool | None:
        started = request_dict.get("context", {}).get("dgrpo_started")
        if started is not None and time.monotonic() - started >= deadline_s:
            return False
        return None

    client.meta.events.register("before-call.s3", start)
    client.meta.events.register_first("needs-retry.s3", past_deadline)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket[/prefix]`, after `check_store_uri` (no credentials, query or fragment)."""
    check_store_uri(uri)
    parsed = urlparse(uri)
    if parsed.scheme.lower() != "s3":
        raise StoreError(f"store URI {redact(uri)!r}: expected s3://bucket/prefix")
    return parsed.netloc, parsed.path.strip("/")


class S3Store(ArtifactStore):
    """Objects under `s3://bucket/prefix/`; the same layout as `LocalStore`, one key per file."""

    def __init__(self, uri: str, settings: S3Settings | None = None, session: boto3.session.Session | None = None):
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.settings = settings or S3Settings.from_env()
        self.settings.validate()
        session = session or boto3.session.Session()
        region = self.settings.region or session.region_name or "us-east-1"
        self.client = session.client("s3", endpoint_url=self.settings.endpoint_url, region_name=region,
                                     config=self.settings.botocore_config())
        _stop_retrying_after(self.settings.request_deadline_s, self.client)
        self.transfer = self.settings.transfer_config()

    def _key(self, key: str) -> str:
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StoreError(f"key {key!r} is not a plain relative key in store {self.uri}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, action: str, key: str, exc: Exception) -> StoreError:
        detail = exc.response.get("Error", {}) if isinstance(exc, ClientError) else {}
        code = detail.get("Code", type(exc).__name__)
        hint = f" (bucket {self.bucket!r} does not exist)" if code == "NoSuchBucket" else ""
        if isinstance(exc, BotoConnectionError | ReadTimeoutError | ConnectTimeoutError | EndpointConnectionError):
            s = self.settings
            hint = (f" (no answer from the S3 endpoint: retried for up to DGRPO_S3_REQUEST_DEADLINE_S="
                    f"{s.request_deadline_s}s, {s.connect_timeout_s}s to connect and {s.read_timeout_s}s to "
                    "answer each attempt)")
        return StoreError(redact(f"{action} {self.uri}/{key}: {code}{hint}: {detail.get('Message') or exc}"))

    def _head(self, key: str) -> dict | None:
        """The object's HEAD response, None when it does not exist."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return None
            raise self._fail("checking", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("checking", key, exc) from exc

    def _holds(self, key: str, sha256: str, size: int) -> bool:
        """Compare the size first (a HEAD), and read the bytes only when it matches."""
        head = self._head(key)
        if head is None or head.get("ContentLength") != size:
            return False
        return sha256_bytes(self._read(key)) == sha256

    def _write(self, key: str, data: bytes) -> None:
        try:
            self.client.upload_fileobj(io.BytesIO(data), self.bucket, self._key(key), Config=self.transfer)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("writing", key, exc) from exc

    def _create(self, key: str, data: bytes) -> bool:
        """A conditional PUT (If-None-Match: *): S3 and SeaweedFS answer 412 when the key exists. A retry of a
        PUT that had succeeded also gets 412; then the object holds our own bytes, which counts as created."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                return self._read(key) == data
            raise self._fail("creating", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("creating", key, exc) from exc

    def _delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("deleting", key, exc) from exc

    def _read(self, key: str) -> bytes:
        buf = io.BytesIO()
        try:
            self.client.download_fileobj(self.bucket, self._key(key), buf, Config=self.transfer)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise FileNotFoundError(f"{self.uri}/{key}") from exc
            raise self._fail("reading", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("reading", key, exc) from exc
        return buf.getvalue()

    def _exists(self, key: str) -> bool:
        return self._head(key) is not None

    def _list(self, prefix: str) -> list[str]:
        base = self._key(prefix.strip("/")) + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("listing", prefix, exc) from exc
        return sorted(keys)
