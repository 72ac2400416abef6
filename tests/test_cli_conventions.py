"""The commands an operator expects (list, errors, config show, plan, status --watch) and the command line's
conventions: -h, --version, --json on every reading command with errors as JSON, DGRPO_STORE, quiet on a closed
pipe, no wrapping off a terminal."""

import io
import json
import subprocess
import sys

import pytest
from dgrpo_pipelines.cli import _console, app
from dgrpo_pipelines.main import main
from support import small_config
from typer.testing import CliRunner

from dgrpo import __version__
from dgrpo.config import load_config
from dgrpo.runtime import listing
from dgrpo.runtime import segment as seg
from dgrpo.runtime.config_view import field_docs
from dgrpo.runtime.engine import run_inprocess
from dgrpo.runtime.plan import segment_tasks
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import LocalStore
from dgrpo.toyworld.presets import toy_preset

RUN = "toy-a"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with one finished 1-round toy fine-tune and one recorded task error."""
    st = LocalStore(tmp_path_factory.mktemp("cli") / "store")
    cfg = small_config(rounds=1, **{"eval.every": 1, "sampling.prompts_per_round": 1, "sampling.group_size": 4,
                                    "train.batch_size": 4, "train.micro_batch_size": 4, "sampling.num_steps": 2,
                                    "eval.num_steps": 2, "eval.samples_per_prompt": 2, "cluster.embedder": None})
    run_inprocess(StageContext(cfg, st, RUN))
    seg.record_error(st, RUN, "reward", RuntimeError("reward server unreachable"), segment=1, round_index=0)
    return st


def _cli(*args, env=None):
    return CliRunner().invoke(app, list(args), env=env)


def _main(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_shows_state_and_rounds_and_reads_dgrpo_store(store):
    shown = _cli("list", env={"DGRPO_STORE": str(store.root)})  # no --store: the environment's
    assert shown.exit_code == 0, shown.output
    line = next(row for row in shown.output.splitlines() if row.startswith(RUN))
    assert line.split()[1:3] == ["done", "1/1"]
    rows = json.loads(_cli("list", "--store", str(store.root), "--json").output)
    assert [(r["run_id"], r["state"], r["rounds_done"], r["rounds_total"], r["errors"]) for r in rows] == [
        (RUN, "done", 1, 1, 1)]


def test_errors_lists_every_recorded_error(store):
    seg.record_error(store, "other", "update", ValueError("x"))  # another run's error is not listed
    text = _cli("errors", RUN, "--store", str(store.root)).output
    assert "1 recorded errors" in text and "task reward, round 1" in text and "reward server unreachable" in text
    errs = json.loads(_cli("errors", RUN, "--store", str(store.root), "--json").output)
    assert [(e["task"], e["root"]) for e in errs] == [("reward", True)]


def test_json_errors_are_json_on_stderr(store, capsys):
    code, out, err = _main(capsys, "errors", "toy-b", "--store", str(store.root), "--json")
    assert code == 1 and out == ""
    payload = json.loads(err)
    assert "no fine-tune of that id" in payload["error"] and "did you mean toy-a" in payload["error"]
    code, out, err = _main(capsys, "status", "--json")  # a usage error (no run id) too
    assert code == 2 and json.loads(err)["exit_code"] == 2
    code, _, err = _main(capsys, "status", RUN, "--store", str(store.root) + "-typo")  # without --json: a line
    assert code == 1 and err.startswith("error: ")


def test_config_show_marks_set_fields_with_defaults_and_docs(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nrounds: 7\n")
    (tmp_path / "base.yaml").write_text("train:\n  learning_rate: 0.002\n")
    shown = _cli("config", "show", "--config", str(child), "--set", "lora.rank=4")
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert "3 of" in lines[0]
    at = lines.index("* train.learning_rate: 0.002   (default: 0.001)")
    assert lines[at + 1].strip() == field_docs(type(load_config(None).train))["learning_rate"]
    assert "* rounds: 7   (default: 10)" in lines and "* lora.rank: 4   (default: 8)" in lines
    assert "  lora.alpha: 8" in lines  # a default, unmarked
    data = json.loads(_cli("config", "show", "--config", str(child), "--json", "--only-set").output)
    assert {f["field"]: (f["value"], f["default"]) for f in data["fields"]} == {
        "rounds": (7, 10), "train.learning_rate": (0.002, 0.001)}
    assert data["recipe_sha256"] == load_config(child).recipe_sha256()


def test_plan_counts_segments_tasks_gpus_cost_and_store_growth():
    data = json.loads(_cli("plan", "configs/sd35m-flowgrpo.yaml", "--json", "--gpu-seconds-per-image", "2").output)
    cfg = load_config("configs/sd35m-flowgrpo.yaml")
    assert len(data["segments"]) == cfg.rounds // cfg.pipeline.rounds_per_run
    assert data["peak_gpus"] == cfg.kubernetes.resolve_fused().gpus
    images = cfg.sampling.prompts_per_round * cfg.sampling.group_size
    assert data["gpu_hours"] == pytest.approx(cfg.rounds * images * 2 / 3600)
    side = cfg.model.resolution // 8
    assert data["store_bytes_per_round"] == images * (cfg.sampling.num_steps + 1) * 16 * side * side * 4
    staged = _cli("plan", str(toy_preset("toy")), "--set", "rounds=4", "--set", "pipeline.rounds_per_run=3")
    assert staged.exit_code == 0, staged.output
    toy = load_config(toy_preset("toy"), {"rounds": 4, "pipeline.rounds_per_run": 3})
    rows = [line.split() for line in staged.output.splitlines() if line.strip()[:1].isdigit()]
    assert [(r[1], int(r[3])) for r in rows] == [("1-3", segment_tasks(toy, 0)), ("4-4", segment_tasks(toy, 3))]
    assert "GPUs at once: 0" in staged.output and "assumed" in staged.output


def test_status_watch_ends_with_the_chain(store):
    shown = _cli("status", RUN, "--store", str(store.root), "--watch", "--interval", "0.1", "--json")
    assert shown.exit_code == 0, shown.output
    readings = [json.loads(line) for line in shown.output.splitlines()]
    assert [r["state"] for r in readings] == ["done"]  # a finished chain: one reading, then exit
    states = iter(["running", "running", "failed"])
    slept = []
    last = listing.watch(lambda: {"state": next(states)}, lambda st: None, 5.0, sleep=slept.append)
    assert last["state"] == "failed" and slept == [5.0, 5.0]


def test_help_short_option_and_version(capsys):
    assert _cli("-h").output == _cli("--help").output
    for command in (["status"], ["config", "show"], ["contract", "show"]):  # subcommands and their groups too
        short, long = _cli(*command, "-h"), _cli(*command, "--help")
        assert short.exit_code == 0 and short.output == long.output and "Usage:" in short.output
    code, out, _ = _main(capsys, "--version")
    assert code == 0 and out.startswith(f"dgrpo {__version__}")


def test_quiet_on_a_closed_pipe():
    """`dgrpo ... | head`: the reader closes the pipe before the command writes; exit 0, nothing on stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "dgrpo_pipelines.main", "config", "show"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == ""


def test_progress_lines_do_not_wrap_off_a_terminal():
    stream = io.StringIO()
    line = "round    3 rollout  shard 1/8 " + "x" * 300
    _console(stream).print(line, highlight=False)
    assert stream.getvalue() == line + "\n"


def test_o_is_where_every_command_writes_its_product():
    """-o/--output names where a command's product goes: a directory (run, experiment, export) or a file (compile,
    report --html); the reading commands print and take no -o."""
    import typer.main

    commands = typer.main.get_command(app).commands
    writers = {"run", "compile", "report", "export", "experiment"}
    for name, command in commands.items():
        opts = {o for p in command.params for o in getattr(p, "opts", [])}
        assert ({"-o", "--output"} <= opts) is (name in writers), name


def test_shell_completion_is_offered():
    out = subprocess.run([sys.executable, "-m", "dgrpo_pipelines.main", "--show-completion", "bash"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "_dgrpo_completion" in out.stdout and "complete " in out.stdout
