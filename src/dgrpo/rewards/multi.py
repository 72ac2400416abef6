"""A main reward with auxiliary rewards beside it, as GARDO's upstream `multi_score`: the pipeline optimises the
main reward, and each auxiliary reward's score is kept as a component of the rewards table, named after it, where
GARDO's KL gate (`gardo.aux_components`) compares the rankings.
"""

from typing import Any

import numpy as np

from dgrpo.rewards import RewardModel, load_reward


def _spec(value: Any, where: str) -> tuple[str, dict[str, Any]]:
    if not (isinstance(value, dict) and isinstance(value.get("name"), str) and set(value) <= {"name", "options"}):
        raise ValueError(f"config field 'reward.options.{where}': expected {{name: <reward>, options: {{...}}}}, "
                         f"got {value!r}")
    return value["name"], dict(value.get("options") or {})


def multi_reward(main: dict[str, Any], auxiliary: dict[str, dict[str, Any]]) -> RewardModel:
    """reward = main's reward; components: main's own components, and `<aux name>` = each auxiliary's reward."""
    main_model = load_reward(*_spec(main, "main"))
    if not isinstance(auxiliary, dict) or not auxiliary:
        raise ValueError("config field 'reward.options.auxiliary': expected a mapping of name -> reward spec")
    aux_models = {name: load_reward(*_spec(spec, f"auxiliary.{name}")) for name, spec in auxiliary.items()}

    def score(images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        out = {k: np.asarray(v, dtype=np.float64) for k, v in main_model(images, prompts).items()}
        for name, model in aux_models.items():
            if name in out:
                raise ValueError(f"config field 'reward.options.auxiliary.{name}': the main reward already has a "
                                 f"component named {name!r}")
            out[name] = np.asarray(model(images, prompts)["reward"], dtype=np.float64)
        return out

    return score
