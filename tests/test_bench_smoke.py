"""Every `make bench` script runs: its --smoke mode (tiny sizes, the same code paths) exits 0 and prints its result
lines with finite numbers, so a change in the library that breaks a bench fails `make test` (as the update's
two-column advantages once broke bench_round's P3 unnoticed)."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"


def run_smoke(script: str, *args: str) -> str:
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--smoke", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} --smoke exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def numbers(out: str, label: str) -> list[float]:
    """The numbers on each line starting with `label` (after its indentation); at least one such line."""
    lines = [line for line in out.splitlines() if line.strip().startswith(label)]
    assert lines, f"no line starting {label!r} in:\n{out}"
    values = [float(v) for line in lines for v in re.findall(NUMBER, line.strip()[len(label):])]
    assert values and all(math.isfinite(v) for v in values), f"{label!r}: {lines}"
    return values


def test_bench_rollout_smoke():
    out = run_smoke("bench_rollout.py", "--threads", "1")
    assert "our ODE sampler equals the pipeline's latents: True" in out
    assert all(v > 0 for v in numbers(out, "ratio SDE / pipeline") + numbers(out, "ratio SDE / plain"))


def test_bench_prune_smoke():
    out = run_smoke("bench_prune.py", "--threads", "1")
    nfe = numbers(out, "NFEs per round")
    assert len(nfe) == 6 and nfe[0] > nfe[1] == nfe[2]  # per arm: plain > pruned == the schedule's count, twice
    assert len(numbers(out, "wall-time ratio")) == 2


def test_bench_compile_smoke():
    out = run_smoke("bench_compile.py")
    assert re.search(rf"^toy\s+{NUMBER}", out, re.M), out
    assert numbers(out, "slowest `dgrpo compile`")[0] > 0


@pytest.mark.e2e
def test_bench_round_smoke():
    """P1 to P4 in one process; P4 runs the toy in process and fused through kfp.local, one round each."""
    out = run_smoke("bench_round.py", "--threads", "1")
    for row in ("P1 ", "P2 ", "P3 ", "P4f", "P4t"):
        assert len(numbers(out, row)) >= 2, row
    assert numbers(out, "fused start-up per segment (toy, measured):")[0] > 0
    assert len(numbers(out, "SD3.5-M fused (projected):")) >= 2
    assert "IndexError" not in out
