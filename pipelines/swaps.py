"""Loading a team's component for a swapped stage, checked against the stage's interface at compile time."""

from pathlib import Path

import yaml
from kfp import components
from kfp.dsl.base_component import BaseComponent

from dgrpo.config import CustomStage
from dgrpo.contracts.stages import SWAP_PARAMETERS, stage_spec


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
