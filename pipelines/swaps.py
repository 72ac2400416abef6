"""Loading a team's component for a swapped stage, checked against the stage's interface at compile time; and,
when it crashed, keeping the last line of its own error.

A team's container records nothing in the store, and the exit task that names it (`segment.swapped_stage_failure`)
cannot read its log (KFP gives an exit task no error message). The client that watches the run can: kfp.local's
task logs (`dgrpo_pipelines.local`), a cluster's pod log through the KFP API (`dgrpo_pipelines.remote`). Both keep
its last line, redacted, as the stage's error (`record_own_error`).
"""

import re
from pathlib import Path

import yaml
from kfp import components
from kfp.dsl.base_component import BaseComponent

from dgrpo.config import CustomStage
from dgrpo.contracts.stages import SWAP_PARAMETERS, stage_spec
from dgrpo.runs.keys import now, shown
from dgrpo.runs.records import ErrorRecord, SegmentRecord
from dgrpo.runs.segments import errors, write_error
from dgrpo.runtime.redaction import redact_secrets
from dgrpo.runtime.segment import SWAPPED_FAILURE
from dgrpo.store import ArtifactStore

OWN_ERROR = "SwappedStageError: "
"""How the error record of a crashed team component starts."""
OWN_SEPARATOR = ") failed: "
"""What precedes the component's own line in that record."""
_SWAPPED = re.compile(rf"^{re.escape(SWAPPED_FAILURE)}(?P<stage>\w+) stage \((?P<what>.+?), "
                      r"pipeline\.stages\.(?P=stage)\) failed in round")


def load_custom(stage: str, custom: CustomStage) -> BaseComponent:
    """The component of `pipeline.stages.<stage>`: a component YAML, or one built from an image and command."""
    where = f"config field 'pipeline.stages.{stage}"
    if custom.component is not None:
        path = Path(custom.component)
        if not path.is_file():
            raise ValueError(f"{where}.component': no component YAML at {path.resolve()}")
        try:
            comp = components.load_component_from_file(str(path))
        except Exception as exc:  # kfp raises several types for a malformed spec
            raise ValueError(f"{where}.component': {path} is not a KFP component: {exc}") from exc
    else:
        comp = components.load_component_from_text(yaml.safe_dump(container_spec(stage, custom)))
    iface = stage_spec(stage)
    inputs, outputs = set(comp.component_spec.inputs or {}), set(comp.component_spec.outputs or {})
    missing = [p.name for p in iface.reads if p.name not in inputs]
    missing += [p.name for p in iface.writes if p.name not in outputs]
    unknown = sorted(inputs - {p.name for p in iface.reads} - set(SWAP_PARAMETERS))
    if missing or unknown:
        raise ValueError(f"{where}': component {comp.name!r} must read {[p.name for p in iface.reads]} and write "
                         f"{[p.name for p in iface.writes]} (see `dgrpo contract show {stage}`); missing "
                         f"{missing}, unknown inputs {unknown}")
    return comp


def container_spec(stage: str, custom: CustomStage) -> dict:
    """A component spec running `custom.command` in `custom.image` with `--<port> PATH` and `--round_index N`."""
    iface = stage_spec(stage)
    args: list = []
    for p in iface.reads:
        args += [f"--{p.name}", {"inputPath": p.name}]
    for p in iface.writes:
        args += [f"--{p.name}", {"outputPath": p.name}]
    for name in ("round_index", "shard_index", "shard_count"):
        args += [f"--{name}", {"inputValue": name}]
    return {"name": f"custom-{stage}", "description": f"External {stage} stage ({custom.image})",
            "inputs": [{"name": p.name, "type": "Dataset"} for p in iface.reads]
            + [{"name": n, "type": "Integer"} for n in ("round_index", "shard_index", "shard_count")],
            "outputs": [{"name": p.name, "type": "Dataset"} for p in iface.writes],
            "implementation": {"container": {"image": custom.image, "command": list(custom.command), "args": args}}}


def image_of(comp: BaseComponent) -> str:
    container = comp.component_spec.implementation.container
    return container.image if container is not None else f"component {comp.name}"


def failed_swap(record: SegmentRecord | None) -> tuple[str, str] | None:
    """(stage, "component X" or "image Y") when a swapped component stopped segment `record`."""
    found = _SWAPPED.match(record.error or "") if record is not None and record.state == "failed" else None
    return (found["stage"], found["what"]) if found else None


def swapped_task_names(ir: dict, stage: str) -> set[str]:
    """The names the tasks of swapped `stage` run under, found in the compiled IR by the display name
    `build_pipeline` gives them ("<stage> (<image>)"): on Argo a task's key, under kfp.local its component's name
    (without "comp-")."""
    dags = [ir.get("root", {})] + list(ir.get("components", {}).values())
    return {name for dag in dags for key, task in dag.get("dag", {}).get("tasks", {}).items()
            if task.get("taskInfo", {}).get("name", "").startswith(f"{stage} (")
            for name in (key, task.get("componentRef", {}).get("name", "").removeprefix("comp-"))}


def recorded_own_error(store: ArtifactStore, run_id: str, record: SegmentRecord) -> ErrorRecord | None:
    """The own error kept for segment `record` already (a watcher asking again reads no log again)."""
    return next((e for e in errors(store, run_id) if e.segment == record.segment
                 and e.error.startswith(OWN_ERROR)), None)


def record_own_error(store: ArtifactStore, run_id: str, record: SegmentRecord, line: str) -> ErrorRecord:
    """Keep `line`, the last line of the swapped component's own error that stopped segment `record`, as the
    stage's error of that segment (what `dgrpo status` and `dgrpo errors` show), once; it is redacted again, as
    every stored error is. The segment's own error is left as its exit task wrote it: a later segment compares
    with it (`segment._team_crash_repeated`)."""
    kept = recorded_own_error(store, run_id, record)
    if kept is not None:
        return kept
    stage, what = failed_swap(record) or ("?", "?")
    round_index = record.start_round + (record.progress or 0)
    kept = ErrorRecord(task=stage, segment=record.segment, round=round_index, at=now(), error=redact_secrets(
        f"{OWN_ERROR}stage {stage} of round {shown(round_index)}: the swapped component ({what}, config field "
        f"'pipeline.stages.{stage}'{OWN_SEPARATOR}{line}"))
    write_error(store, run_id, kept)
    return kept


def own_error_clause(kept: ErrorRecord, where: str) -> str:
    """The clause that adds the component's own error, read from `where`, to the line a person reads."""
    return f"; the swapped {kept.task} component's own last error ({where}): {kept.error.split(OWN_SEPARATOR, 1)[-1]}"
