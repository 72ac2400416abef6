"""The update stage on several GPUs of one pod: torchrun starts `train.num_processes` workers of `train_round`.

The stage process puts the round's inputs in the artifact store (`dgrpo.runs.exchange`) and
runs `python -m torch.distributed.run --standalone --nproc_per_node N -m dgrpo.stages.update.parallel STORE KEY`.
Each worker opens the same store, accelerate picks up torchrun's process group (NCCL on GPUs, gloo on CPUs),
and the main worker writes the artifacts and the result that the stage process reads back.
Because request and result live in the store, the same command runs under a multi-node torchrun too.
"""

import json
import subprocess
import sys

from dgrpo.config import config_from_json
from dgrpo.runs.exchange import get_update_request, get_update_result, put_update_request, put_update_result
from dgrpo.stages.shared.context import StageContext, StageResult
from dgrpo.stages.update.train import UpdateInputs, train_round
from dgrpo.store import ArtifactRef, open_store


def launch(ctx: StageContext, inputs: UpdateInputs) -> StageResult:
    """Train the round in `train.num_processes` processes and return the main process's result."""
    request = put_update_request(ctx.store, ctx.run_id, inputs.round_index, _request(ctx, inputs))
    ctx.store.flush()  # the workers open the store themselves
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={ctx.config.train.num_processes}", "-m", __name__, ctx.store.uri, request]
    code = subprocess.run(command, check=False).returncode
    data = get_update_result(ctx.store, request) if code == 0 else None
    if data is None:
        raise RuntimeError(f"update round {inputs.round_index + 1}: the {ctx.config.train.num_processes} data-parallel "
                           f"workers failed (exit code {code}); their log is above")
    return StageResult({k: ArtifactRef.from_json(json.dumps(v), source=f"{request} result output {k!r}")
                        for k, v in data["outputs"].items()}, data["metrics"])


def _request(ctx: StageContext, inputs: UpdateInputs) -> dict:
    def ref(r: ArtifactRef | None) -> dict | None:
        return None if r is None else json.loads(r.to_json())

    rollouts = [ref(r) for r in inputs.rollouts] if isinstance(inputs.rollouts, list) else ref(inputs.rollouts)
    return {"config": ctx.config.to_json(), "run_id": ctx.run_id,
            "round_index": inputs.round_index, "rollouts": rollouts, "scores": ref(inputs.scores),
            "adapter": ref(inputs.adapter), "optimizer_state": ref(inputs.optimizer_state)}


def _inputs(request: dict) -> UpdateInputs:
    def ref(d: dict | None) -> ArtifactRef | None:
        return None if d is None else ArtifactRef.from_json(json.dumps(d), source="update request")

    rollouts = request["rollouts"]
    return UpdateInputs(request["round_index"], [ref(r) for r in rollouts] if isinstance(rollouts, list)
                        else ref(rollouts), ref(request["scores"]), ref(request["adapter"]),
                        ref(request["optimizer_state"]))


def main(store_uri: str, request_key: str) -> None:
    """One worker: train this process's share of the round; the main process writes the result."""
    store = open_store(store_uri)
    request = get_update_request(store, request_key)
    ctx = StageContext(config_from_json(request["config"]), store, request["run_id"])
    result = train_round(ctx, _inputs(request))
    if result is not None:
        put_update_result(store, request_key, {
            "outputs": {k: json.loads(v.to_json()) for k, v in result.outputs.items()}, "metrics": result.metrics})


if __name__ == "__main__":
    main(*sys.argv[1:3])
