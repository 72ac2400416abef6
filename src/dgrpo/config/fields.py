"""Field types the loader checks: choices as `Literal`, numbers as `Annotated[..., Range(...)]`.

A config dataclass declares what a field may hold in its type, so the rule sits next to the field's
documentation and `validate_fields` applies every rule of every section without hand-written checks. Floats must
also be finite: a NaN learning rate or guidance scale would otherwise train silently on NaN.
"""

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the dotted field path."""


def check(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config field '{path}': {message}")


@dataclass(frozen=True)
class SectionOf:
    """Annotation of a section whose dataclass is looked up on first use (`resolve()`): a built-in method's options
    live in the method's module (`dgrpo.config.methods.builtin_options`), which the config layer must not import."""

    resolve: typing.Callable[[], type]


def section_of(hint: Any) -> SectionOf | None:
    """The `SectionOf` marker of an `Annotated` hint, or None."""
    if typing.get_origin(hint) is not typing.Annotated:
        return None
    return next((rule for rule in typing.get_args(hint)[1:] if isinstance(rule, SectionOf)), None)


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric field: ge/le inclusive, gt/lt exclusive; None leaves that side open."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        parts = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if v is not None]
        return " and ".join(parts)

    def contains(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))


POSITIVE = Range(gt=0)
NON_NEGATIVE = Range(ge=0)


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _base_type(hint: Any) -> type:
    """The Python type of a field type's values (int for Annotated[int, ...], str for Literal["auto"])."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _base_type(args[0])
    if origin is typing.Literal:
        return type(args[0])
    return origin or hint


def _check_value(hint: Any, value: Any, path: str) -> None:
    """Check `value` against the rules in `hint` (Literal choices, Range annotations, finiteness), recursively."""
    if value is None:
        return
    hint = _strip_optional(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # e.g. a count or "auto": the rules of the member of its type
        members = typing.get_args(hint)
        _check_value(next((m for m in members if isinstance(value, _base_type(m))), members[-1]), value, path)
        return
    if section_of(hint):
        validate_fields(value, path)
        return
    if origin is typing.Annotated:
        base, *rules = typing.get_args(hint)
        _check_value(base, value, path)
        for rule in rules:
            if isinstance(rule, Range):
                check(rule.contains(value), path, f"must be {rule.describe()}, got {value!r}")
        return
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        check(value in choices, path, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
        return
    if isinstance(value, float):
        check(math.isfinite(value), path, f"must be a finite number, got {value!r}")
    if hint is Any:  # free-form options (reward.options, cluster.embedder_options): still no NaN or inf inside
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            _check_value(Any, item, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}")
        return
    if dataclasses.is_dataclass(value):
        validate_fields(value, path)
    elif origin is list and isinstance(value, list):
        for i, item in enumerate(value):
            _check_value(typing.get_args(hint)[0], item, f"{path}[{i}]")
    elif origin is dict and isinstance(value, dict):
        for key, item in value.items():
            _check_value(typing.get_args(hint)[1], item, f"{path}.{key}")


def validate_fields(obj: Any, path: str = "") -> None:
    """Apply the type rules of every field of dataclass `obj` (and of the dataclasses inside it)."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        _check_value(hints[f.name], getattr(obj, f.name), f"{path}.{f.name}" if path else f.name)


def numeric_fields_without_range(cls: type, path: str = "") -> list[str]:
    """Dotted paths of int/float fields of `cls` (recursively) that declare no Range: every one should."""
    missing = []
    for f in dataclasses.fields(cls):
        hint = _strip_optional(typing.get_type_hints(cls, include_extras=True)[f.name])
        here = f"{path}.{f.name}" if path else f.name
        if section := section_of(hint):
            missing += numeric_fields_without_range(section.resolve(), here)
            continue
        if typing.get_origin(hint) is typing.Annotated:
            continue
        if hint in (int, float):
            missing.append(here)
        elif dataclasses.is_dataclass(hint):
            missing += numeric_fields_without_range(hint, here)
        elif typing.get_origin(hint) in (list, dict):
            inner = _strip_optional(typing.get_args(hint)[-1])
            if typing.get_origin(inner) is not typing.Annotated and inner in (int, float):
                missing.append(here)
            elif dataclasses.is_dataclass(inner):
                missing += numeric_fields_without_range(inner, here + "[]")
    return missing
