"""Named plug-in points: one registry type for policies, rewards, embedders and mode classifiers.

A name resolves to a factory in one of three ways:

- a built-in, listed by its import path and imported on first use, so the core never imports a backbone or a
  domain (the toy world included) that a run does not use;
- registered in code with `@REGISTRY.register("name")`;
- a `package.module:factory` path written in the config, so a team's reward, backbone or embedder plugs in from its
  own package with no edit to dgrpo.

A name registered twice, or clashing with a built-in, is an error rather than a silent overwrite.
"""

import importlib
import importlib.util
import re
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class RegistryError(ValueError):
    """An unknown, duplicate or unimportable plug-in; the message names the config field."""


def import_path(path: str, where: str) -> object:
    """The object at `package.module:attr` (attr may be dotted)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise RegistryError(f"{where}: {path!r} is not a 'package.module:factory' path")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"{where}: cannot import module {module_name!r} of {path!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RegistryError(f"{where}: module {module_name!r} has no attribute {attr!r} (from {path!r})")
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Factories of one kind by name; see the module docstring for how a name resolves."""

    def __init__(self, kind: str, config_field: str, builtins: dict[str, str]):
        self.kind, self.config_field = kind, config_field
        self._builtins = dict(builtins)
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding `name`; refuses a name that is taken, or that looks like an import path."""
        if name in self._entries or name in self._builtins:
            raise RegistryError(f"{self.kind} {name!r} is already registered ({self.config_field}): choose another "
                                f"name")
        if ":" in name:
            raise RegistryError(f"{self.kind} name {name!r}: ':' is reserved for 'package.module:factory' paths")

        def add(factory: T) -> T:
            self._entries[name] = factory
            return factory

        return add

    def names(self) -> list[str]:
        return sorted(self._builtins.keys() | self._entries.keys())

    def get(self, name: str) -> T:
        """The factory of `name` (a registered or built-in name, or a `package.module:factory` path)."""
        where = f"config field '{self.config_field}'"
        if name in self._entries:
            return self._entries[name]
        if name in self._builtins:
            self._entries[name] = import_path(self._builtins[name], where)  # type: ignore[assignment]
            return self._entries[name]
        if ":" in name:
            factory = import_path(name, where)
            if not callable(factory):
                raise RegistryError(f"{where}: {name!r} is not callable")
            return factory  # type: ignore[return-value]
        raise RegistryError(f"{where}: unknown {self.kind} {name!r} (known: {', '.join(self.names())}; or a "
                            f"'package.module:factory' path)")

    def check(self, name: str, require_import: bool = True) -> str | None:
        """Fail now, naming the config field, if `name` cannot resolve; built-ins are not imported.

        A `package.module:factory` path is imported and must name a callable. With `require_import` False (compiling
        on a machine that lacks the stage images' packages) a path whose top-level package is not installed here
        passes with the warning returned instead; a typo in a name or a path's form is still an error."""
        if name in self._builtins or name in self._entries:
            return None
        if ":" not in name:
            self.get(name)  # raises: unknown name
        module_name, _, attr = name.partition(":")
        if not _DOTTED.fullmatch(module_name) or not _DOTTED.fullmatch(attr):
            raise RegistryError(f"config field '{self.config_field}': {name!r} is not a 'package.module:factory' "
                                "path (dotted Python names on both sides of one ':')")
        top = module_name.split(".")[0]
        if not require_import and importlib.util.find_spec(top) is None:
            return (f"config field '{self.config_field}': package {top!r} of {name!r} is not installed here; it "
                    "must be installed in the stage images")
        self.get(name)
        return None
