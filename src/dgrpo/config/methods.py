"""The training methods by name, and the check of a run's `methods` section.

A method's hooks live in its module under `dgrpo.methods` (or a team's package); the config names it here by
import path only, so the config layer imports no method (as `dgrpo.rewards` names the toy reward).
"""

import dataclasses
from typing import Annotated, Any

from dgrpo.config.fields import ConfigError, SectionOf, validate_fields
from dgrpo.registry import Registry

BUILTINS = {
    "diversegrpo": "dgrpo.methods.diversegrpo:DiverseGRPO",
    "drift": "dgrpo.methods.drift:Drift",
    "progrpo": "dgrpo.methods.progrpo:ProGRPO",
    "gardo": "dgrpo.methods.gardo:Gardo",
}
"""Methods every run consults, in this order; their hooks act only where their options (`BUILTIN_OPTIONS`) are on."""
BUILTIN_OPTIONS = {
    "diversegrpo": "the cluster section (cluster.method: diverse, cluster.beta, ...) and train.regularizer, "
                   "sa_lambda, structure_steps and detail_baseline",
    "drift": "the top-level section 'drift'", "progrpo": "the top-level section 'progrpo'",
    "gardo": "the top-level section 'gardo'",
}
"""Where each built-in method's options are set (its sections predate `methods`, so recorded configs keep their
hash)."""
OPTIONAL = {
    "grpo_guard": "dgrpo.methods.grpo_guard:GRPOGuard",
    "diversity_target": "dgrpo.methods.diversity_target:DiversityTarget",
}
"""Methods a run turns on by naming them in `methods` (their options are `methods.<name>.*`)."""
METHODS: Registry[Any] = Registry("method", "methods", BUILTINS | OPTIONAL)


def builtin_options(name: str) -> Any:
    """The annotation of built-in method `name`'s top-level section (`drift`, ...): its `Options` dataclass, which
    lives in the method's module and is looked up on first use."""
    return Annotated[Any, SectionOf(lambda: METHODS.get(name).Options)]


def builtin_defaults(name: str) -> Any:
    """That section's default: the method's `Options()`, a fresh one per config."""
    return dataclasses.field(default_factory=lambda: METHODS.get(name).Options())


def method_options(name: str, options: dict[str, Any] | None, cfg: Any = None) -> Any:
    """Method `name`'s options as its `Options` dataclass (an empty one where it declares none), checked: an unknown
    option is an error naming `methods.<name>.<option>`. With the run config `cfg`, the options' `check_run(cfg,
    path)` (where it has one) checks what spans sections."""
    cls = METHODS.get(name)
    options_cls = getattr(cls, "Options", None)
    if options_cls is None:
        if options:
            raise ConfigError(f"config field 'methods.{name}': method {name!r} takes no options, got {sorted(options)}")
        return None
    known = {f.name for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(options or {}) - known)
    if unknown:
        raise ConfigError(f"config field 'methods.{name}.{unknown[0]}': unknown option (known: "
                          f"{', '.join(sorted(known))})")
    built = options_cls(**(options or {}))
    validate_fields(built, f"methods.{name}")
    if cfg is not None and hasattr(built, "check_run"):
        built.check_run(cfg, f"methods.{name}")
    return built


def check_builtins(cfg: Any) -> None:
    """The built-in methods' checks that span sections: each one's `check_run(cfg)` classmethod, looked up by name
    when a config is validated, so the config layer still imports no method."""
    for name in BUILTINS:
        cls = METHODS.get(name)
        if hasattr(cls, "check_run"):
            cls.check_run(cfg)
