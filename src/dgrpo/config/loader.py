"""Reading a run config: YAML files with `base:` presets, prompt files, dotted overrides, typed coercion.

Unknown keys and wrong types are errors that name the dotted field; `RunConfig.validate` then applies the rules
declared in the field types and the cross-field checks.
"""

import contextlib
import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from dgrpo.config.fields import ConfigError, section_of
from dgrpo.config.prompt_files import PromptFileError, read_prompts
from dgrpo.config.recipe import ClusterConfig, EvalConfig, SamplingConfig, TrainConfig
from dgrpo.config.run import RunConfig

_DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _build(cls: type, data: Any, path: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by field path."""
    if not isinstance(data, dict):
        raise ConfigError(f"config field '{path or '<root>'}': expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"config field '{where}{unknown[0]}': unknown field (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        field_path = f"{path}.{name}" if path else name
        kwargs[name] = _coerce(hints[name], value, field_path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if section := section_of(hint):  # a built-in method's options, its dataclass in the method's module
        return _build(section.resolve(), value or {}, path)
    if origin is typing.Annotated:  # the rules in the annotation are checked by validate_fields
        return _coerce(args[0], value, path)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value or {}, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        for member in members[:-1]:  # a number or a keyword (structure_steps: 3 or auto): the first that fits
            with contextlib.suppress(ConfigError):
                return _coerce(member, value, path)
        return _coerce(members[-1], value, path)
    if origin is typing.Literal:  # membership is checked by validate_fields, the type here
        return _coerce(type(args[0]), value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config field '{path}': expected a list, got {type(value).__name__}")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config field '{path}': expected a mapping, got {type(value).__name__}")
        return {str(k): _coerce(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; a person means the number
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)  # rounds: 1e3, or 5.0: a whole number however it is written
    if hint is float and isinstance(value, float):
        return value
    if hint is Any or isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"config field '{path}': expected {hint.__name__}, got {type(value).__name__} {value!r}")


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    return _build(RunConfig, data, "").validate()


class DuplicateKeyError(yaml.YAMLError):
    """A mapping states one key twice: YAML keeps the last silently, so an edit to the first copy would be ignored."""


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping, naming the dotted key and both lines.

    Keys brought in by a merge (`<<: *anchor`) may be overridden, as YAML intends; keys stated twice may not."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_keys(node, "", set())
        return super().construct_document(node)

    def _check_keys(self, node: yaml.Node, path: str, seen: set[int]) -> None:
        if id(node) in seen:  # an alias to a node already checked
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_keys(item, f"{path}[{i}]", seen)
        if not isinstance(node, yaml.MappingNode):
            return
        marks: dict[Any, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else None
            here = f"{path}.{key}" if path else str(key)
            if key is not None and key in marks:
                first, second = marks[key], key_node.start_mark
                where = (f"on lines {first.line + 1} and {second.line + 1}" if first.line != second.line else
                         f"on line {first.line + 1} (columns {first.column + 1} and {second.column + 1})")
                raise DuplicateKeyError(f"key '{here}' is given twice, {where} (YAML would keep the second "
                                        "silently); delete one")
            if key is not None:
                marks[key] = key_node.start_mark
            self._check_keys(value_node, here, seen)


def parse_yaml(text: str) -> Any:
    """YAML text (a file, a --set value) as Python values; a key stated twice in a mapping is an error."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 -- a SafeLoader subclass


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value (lists included) replaces the base's."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a mapping, with `base: other.yaml` (relative to the file) merged underneath it.

    Presets that differ in a few fields (toy-sareg from toy-flowgrpo) state only those fields, so a change to the
    shared recipe cannot leave one arm of a comparison behind.
    """
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config file '{path}': 'base' chain loops back to itself")
    try:
        data = parse_yaml(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"config file '{path}': cannot read: {exc.strerror}") from exc
    except DuplicateKeyError as exc:
        raise ConfigError(f"config file '{path}': {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}': invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}': expected a mapping at the top level")
    base = data.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"config file '{path}': field 'base' must be a file name, got {base!r}")
    below = read_yaml(path.parent / base, (*_seen, path)) if base is not None else {}
    _read_prompt_files(below, data, path.parent, f"config file '{path}'")
    return _merge(below, data)


PROMPT_SECTIONS = {"sampling": SamplingConfig, "eval": EvalConfig}
PROMPT_KEYS = ("prompts", "prompts_file", "prompts_sha256")


def _read_prompt_files(below: dict[str, Any], layer: dict[str, Any], base_dir: Path, source: str) -> None:
    """Read the `prompts_file` each section of `layer` (a config file or the overrides, to be merged over `below`)
    names, relative to `base_dir`, into its `prompts` and `prompts_sha256`."""
    for section, cls in PROMPT_SECTIONS.items():
        own, under = layer.get(section), below.get(section)
        if not isinstance(own, dict):
            continue
        if "prompts_sha256" in own:  # a resolved config (a run's config.json): its recorded prompts stand
            resolved = "prompts" in own and (own["prompts_sha256"] is None) == (own.get("prompts_file") is None)
            if not resolved:
                raise ConfigError(f"config field '{section}.prompts_sha256' (in {source}): written by the loader "
                                  f"from prompts_file, do not set it")
            continue
        file = own.get("prompts_file")
        if file is not None:
            if not isinstance(file, str):
                raise ConfigError(f"config field '{section}.prompts_file' (in {source}): expected a file name, got "
                                  f"{file!r}")
            if "prompts" in own:
                raise ConfigError(f"config field '{section}.prompts' (in {source}): set either prompts or "
                                  f"prompts_file ({file}), not both")
            try:
                own["prompts"], own["prompts_sha256"] = read_prompts(base_dir / Path(file).expanduser())
            except PromptFileError as exc:
                raise ConfigError(f"config field '{section}.prompts_file' (in {source}): {exc}") from exc
        elif "prompts_file" in own:  # an explicit null: back to inline (or default) prompts
            own["prompts_sha256"] = None
            if isinstance(under, dict) and under.get("prompts_file") is not None:
                own.setdefault("prompts", cls().prompts)
        elif "prompts" in own and isinstance(under, dict) and under.get("prompts_file") is not None:
            raise ConfigError(f"config field '{section}.prompts' (in {source}): the base config reads them from "
                              f"prompts_file ({under['prompts_file']}); set {section}.prompts_file to null as well")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a YAML config (None: the toy defaults) and apply dotted-key overrides such as {"rounds": 2}.

    A `prompts_file` is read here, relative to the file naming it (to the working directory for an override)."""
    data = read_yaml(path) if path is not None else {}
    overrides = dict(overrides or {})
    layer: dict[str, Any] = {}
    for key in list(overrides):
        section, _, leaf = key.partition(".")
        if section in PROMPT_SECTIONS and leaf in PROMPT_KEYS:
            layer.setdefault(section, {})[leaf] = overrides.pop(key)
        elif key in PROMPT_SECTIONS and isinstance(overrides[key], dict):  # `sampling={prompts_file: ...}`
            whole = overrides[key] = dict(overrides[key])
            layer.setdefault(key, {}).update({k: whole.pop(k) for k in PROMPT_KEYS if k in whole})
    _read_prompt_files(data, layer, Path.cwd(), "overrides")
    overrides |= {f"{section}.{k}": v for section, values in layer.items() for k, v in values.items()}
    _check_override_keys(overrides)
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                section = ".".join(parents[:depth + 1])
                raise ConfigError(f"config field '{key}': '{section}' holds a single value ({node!r}), not a "
                                  "section with fields")
        # a mapping merges into the section key by key, as in a `base:` file: `train={learning_rate: ...}` means
        # `train.learning_rate=...`, not "reset every other field of train to its default"
        node[leaf] = _merge(node[leaf], value) if isinstance(value, dict) and isinstance(node.get(leaf), dict) \
            else value
    return config_from_dict(data)


def _check_override_keys(overrides: dict[str, Any]) -> None:
    """Refuse an empty key part, and a key under another override that sets a single value (`rounds=2` with
    `rounds.x=1`): one of the two would be dropped silently."""
    for key, value in overrides.items():
        if not all(key.split(".")):
            raise ConfigError(f"config override {key!r}: empty field name in the dotted path")
        for other in overrides:
            if other.startswith(f"{key}.") and not isinstance(value, dict):
                raise ConfigError(f"config overrides '{key}' and '{other}' conflict: '{key}' is set to a single "
                                  f"value ({value!r}), so it has no field '{other[len(key) + 1:]}'")


def config_from_json(text: str) -> RunConfig:
    data = json.loads(text)
    if isinstance(data, dict) and isinstance(data.get("cluster"), dict):  # recorded before cluster.k_selection
        data["cluster"] = ClusterConfig.upgrade_recorded(data["cluster"])
    if isinstance(data, dict) and isinstance(data.get("train"), dict):  # recorded before train.kl_form
        data["train"] = TrainConfig.upgrade_recorded(data["train"])
    return config_from_dict(data)
