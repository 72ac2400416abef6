"""Run the training pipeline through kfp.local with every task in its own stage image's environment.

    python tests/stage_image_run.py ENVS CONFIG_JSON STORE RUN_ID WORK

kfp.local starts each task as `<sys.executable> -m kfp.dsl.executor_main ... --function_to_execute <component>`.
Here sys.executable is a dispatcher script that runs the component under the python of the venv
(scripts/image_envs.py) of the image the component was defined with (its `base_image`), and logs which one.
The orchestration itself (kfp.local, the pipeline factory) runs here, as it runs outside the images on a cluster.
"""

import sys
from pathlib import Path

from dgrpo_components import exchange, stages
from dgrpo_pipelines.local import open_context, run_pipeline

from dgrpo.config import config_from_json


def component_images() -> dict[str, str]:
    """Component function name -> the stage whose image runs it (from the component's base image)."""
    out = {}
    for module in (stages, exchange):
        for name in dir(module):
            comp = getattr(module, name)
            spec = getattr(comp, "component_spec", None)
            if spec is None or spec.implementation.container is None:
                continue
            image = spec.implementation.container.image
            out[comp.python_func.__name__] = image.rsplit("/", 1)[-1].split(":")[0].removeprefix("dgrpo-")
    return out


def write_dispatcher(envs: Path, work: Path) -> Path:
    cases = "".join(f'  {fn}) py="{envs / stage / "bin" / "python"}" ;;\n' for fn, stage in component_images().items())
    script = work / "stage-python"
    script.write_text(f"""#!/bin/sh
fn=""; prev=""
for a in "$@"; do [ "$prev" = "--function_to_execute" ] && fn="$a"; prev="$a"; done
case "$fn" in
{cases}  *) echo "stage-python: no stage image for component '$fn'" >&2; exit 97 ;;
esac
echo "$fn $py" >> "{work / 'dispatch.log'}"
exec "$py" "$@"
""")
    script.chmod(0o755)
    return script


def main(envs: str, config_json: str, store: str, run_id: str, work: str) -> None:
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    sys.executable = str(write_dispatcher(Path(envs).resolve(), work_dir))  # what kfp.local starts each task with
    ctx = open_context(config_from_json(Path(config_json).read_text()), store, run_id)
    run_pipeline(ctx, store, work_dir, "kfp")


if __name__ == "__main__":
    main(*sys.argv[1:])
