"""DGRPO_* variables a config gives the pods: checked at load against the names dgrpo reads.

A stage pod refuses an unknown DGRPO_* variable when it opens the store (`dgrpo.environment`); a misspelled name in
`kubernetes.*.env` (or mapped from a Secret or ConfigMap) is caught here instead, before anything is compiled or
submitted, naming the config field.
"""

import dataclasses
from typing import Any

from dgrpo.config.fields import ConfigError
from dgrpo.environment import unknown_variable


def check_variable_names(kubernetes: Any, path: str = "kubernetes") -> None:
    """Raise ConfigError for the first unknown DGRPO_* name in any pod section of `kubernetes` (defaults, stages.*,
    ...): the keys of `env`, the variable names (values) of `secrets[].env` and `config_maps[].env`."""
    sections: list[tuple[str, Any]] = []
    for f in dataclasses.fields(kubernetes):
        value = getattr(kubernetes, f.name)
        items = value.items() if isinstance(value, dict) else [(None, value)]
        sections += [(f.name if key is None else f"{f.name}.{key}", v) for key, v in items if hasattr(v, "env")
                     and hasattr(v, "secrets")]
    for where, resources in sections:
        names = [(f"{path}.{where}.env.{name}", name) for name in (resources.env or {})]
        for kind in ("secrets", "config_maps"):
            for i, source in enumerate(getattr(resources, kind, None) or []):
                names += [(f"{path}.{where}.{kind}[{i}].env.{key}", name) for key, name in source.env.items()]
        for field, name in names:
            if (why := unknown_variable(str(name))) is not None:
                raise ConfigError(f"config field '{field}': {name} is {why}")
