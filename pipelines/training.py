"""The Kubeflow training pipeline, unrolled over rounds at compile time from `dgrpo.engine.training_plan`."""

from pathlib import Path

from dgrpo_components import cluster, evaluate, reward, rollout, update
from kfp import compiler, dsl

from dgrpo.config import RunConfig
from dgrpo.engine import training_plan


def build_pipeline(config: RunConfig):
    """A KFP pipeline for `config`: one task per planned stage, artifacts wired round to round."""

    @dsl.pipeline(name=config.name, description=f"dgrpo training, {config.rounds} rounds (config "
                                                f"{config.sha256()[:12]})")
    def training(store_uri: str, run_id: str, config_json: str = config.to_json()):
        common = {"config_json": config_json, "store_uri": store_uri, "run_id": run_id}
        carried: dict = {}
        latest: dict = {}
        for task in training_plan(config):
            kwargs = dict(common, round_index=task.round)
            name = f"{task.stage} r{task.round}"
            if task.stage == "evaluate":
                evaluate(**kwargs, **_only(carried, "adapter")).set_display_name(f"evaluate after r{task.round}")
            elif task.stage == "rollout":
                latest["rollouts"] = rollout(**kwargs, **_only(carried, "adapter")).set_display_name(name)
            elif task.stage == "reward":
                latest["rewards"] = reward(**kwargs, rollouts=latest["rollouts"].outputs["rollouts"]
                                           ).set_display_name(name)
            elif task.stage == "cluster":
                latest["scores"] = cluster(**kwargs, rollouts=latest["rollouts"].outputs["rollouts"],
                                           rewards=latest["rewards"].outputs["rewards"]).set_display_name(name)
            else:
                up = update(**kwargs, rollouts=latest["rollouts"].outputs["rollouts"],
                            scores=latest["scores"].outputs["scores"], **carried).set_display_name(name)
                carried = {"adapter": up.outputs["new_adapter"],
                           "optimizer_state": up.outputs["new_optimizer_state"]}

    return training


def _only(carried: dict, *names: str) -> dict:
    return {k: v for k, v in carried.items() if k in names}


def compile_pipeline(config: RunConfig, package_path: str | Path) -> Path:
    """Write the KFP IR YAML of the training pipeline."""
    path = Path(package_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(config), str(path))
    return path
