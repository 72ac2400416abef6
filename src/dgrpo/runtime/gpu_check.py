"""A task that was given GPUs refuses to run without them.

Every stage falls back to the CPU when torch sees no GPU (accelerate, the policies, the embedders), which is right
on a laptop and a disaster on a cluster: an 8-GPU pod whose node driver is older than torch's CUDA build "trains"
on the CPU for hours. The compiled pipeline sets DGRPO_EXPECT_GPUS on every task with GPUs
(dgrpo_pipelines.kubernetes.configure); such a task stops at once with one line naming the node's driver and
torch's CUDA.
"""

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

EXPECT_GPUS_ENV = "DGRPO_EXPECT_GPUS"
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")


def expected_gpus(environ: Mapping[str, str]) -> int:
    raw = environ.get(EXPECT_GPUS_ENV, "").strip()
    if not raw:
        return 0
    try:
        count = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {EXPECT_GPUS_ENV}: expected a GPU count, got {raw!r}") from None
    if count < 0:
        raise ValueError(f"environment variable {EXPECT_GPUS_ENV}: expected a GPU count >= 0, got {count}")
    return count


def node_driver(version_file: Path = DRIVER_VERSION_FILE) -> str:
    """The NVIDIA driver the container sees: nvidia-smi's driver version, else the kernel module's version line."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=20)
            versions = sorted({line.strip() for line in out.stdout.splitlines() if line.strip()})
            if out.returncode == 0 and versions:
                return f"NVIDIA driver {', '.join(versions)} (nvidia-smi)"
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        first = version_file.read_text().splitlines()[0]
    except (OSError, IndexError):
        return f"no NVIDIA driver visible (no nvidia-smi on PATH, no {version_file})"
    return f"NVIDIA kernel module: {' '.join(first.split())}"


def _torch_view() -> tuple[str, str | None, int, str]:
    """(torch version, its CUDA build or None, visible devices, why CUDA is unusable or '')."""
    import torch

    reason = ""
    count = 0
    if torch.version.cuda is not None:
        try:
            torch.cuda.init()
            count = torch.cuda.device_count()
        except Exception as exc:  # noqa: BLE001 - the driver's own words are the useful part of the message
            reason = " ".join(str(exc).split())[:300]
    return torch.__version__, torch.version.cuda, count, reason


def check_gpus(environ: Mapping[str, str] | None = None, torch_view: Callable[[], tuple] = _torch_view,
               driver: Callable[[], str] = node_driver) -> None:
    """Raise when this task was given DGRPO_EXPECT_GPUS GPUs and torch sees fewer; nothing when it expects none."""
    expected = expected_gpus(os.environ if environ is None else environ)
    if expected == 0:
        return
    version, cuda, count, reason = torch_view()
    if count >= expected:
        return
    build = f"torch {version} built for CUDA {cuda}" if cuda else f"torch {version} is a CPU-only build"
    why = f": {reason}" if reason else ""
    raise RuntimeError(f"this task was given {expected} GPU(s) but torch sees {count}{why}; {driver()}; {build}. "
                       "Refusing to run on the CPU: use nodes whose driver supports that CUDA, or build the images "
                       "for it (docs/kubernetes.md, Images)")
