"""The commands a team swapping a stage needs run without kfp installed: contract show/check and lineage."""

import subprocess
import sys

import pyarrow as pa

from dgrpo import artifacts, contracts
from dgrpo.runs.lineage import Provenance
from dgrpo.store import LocalStore

WITHOUT_KFP = """
import sys

class NoKfp:  # as if kfp were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "kfp" or name.startswith("kfp."):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoKfp())
from dgrpo_pipelines.cli import app

app(sys.argv[1:], prog_name="dgrpo")
"""


def _dgrpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_KFP, *args], capture_output=True, text=True, timeout=120)


def test_contract_and_lineage_commands_run_without_kfp(tmp_path):
    shown = _dgrpo("contract", "show", "reward")
    assert shown.returncode == 0, shown.stderr
    assert "stage reward" in shown.stdout and "rewards v" in shown.stdout

    store = LocalStore(tmp_path / "store")
    table = pa.table({"sample_id": ["r0/p0/s0"], "group_id": ["r0/p0"], "prompt": ["a red square"],
                      "reward": [0.5], "components": pa.array([[("quality", 0.5)]],
                                                              contracts.REWARDS.schema.field("components").type)})
    ref = artifacts.write_table(store, table, contracts.REWARDS, Provenance("reward", "team", "0" * 64, round=0))
    path = tmp_path / "out.parquet"
    path.write_bytes(store.get(ref))
    checked = _dgrpo("contract", "check", "reward", str(path))
    assert checked.returncode == 0, checked.stderr
    assert "valid rewards" in checked.stdout

    walked = _dgrpo("lineage", ref.sha256, "--store", str(tmp_path / "store"))
    assert walked.returncode == 0, walked.stderr
    assert ref.sha256[:12] in walked.stdout

    needs_kfp = _dgrpo("compile", "--output", str(tmp_path / "p.yaml"))
    assert needs_kfp.returncode != 0 and "kfp" in needs_kfp.stderr + needs_kfp.stdout
