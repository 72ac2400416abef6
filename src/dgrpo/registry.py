"""Named plug-in points: one registry type for policies, rewards, embedders and mode classifiers.

A name resolves to a factory in one of three ways:

- a built-in, listed by its import path and imported on first use, so the core never imports a backbone or a
  domain (the toy world included) that a run does not use; a domain's rows may live in its own package, in a
  module the registry names by path (`contributors`) and reads on first lookup;
- registered in code with `@REGISTRY.register("name")`;
- a `package.module:factory` path written in the config, so a team's reward, backbone or embedder plugs in from its
  own package with no edit to dgrpo.

A name registered twice, or clashing with a built-in, is an error rather than a silent overwrite.

A team's plug-in (a path, or a name registered in code) is remembered by the module it lives in, so that a failure
in its code can be told apart from dgrpo's and named (`plugin_of`): a team reading "IndexError" cannot tell which of
its plug-ins, or whether dgrpo, raised it.
"""

import importlib
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class RegistryError(ValueError):
    """An unknown, duplicate or unimportable plug-in; the message names the config field."""


@dataclass(frozen=True)
class PluginSource:
    """A team's plug-in: what it plugs in (reward, embedder, policy...), the config field naming it, its path."""

    kind: str
    config_field: str
    path: str

    def owns(self, module_name: str) -> bool:
        """Whether code of module `module_name` is the plug-in's: its package (a path into dgrpo itself: that
        module only)."""
        module = self.path.partition(":")[0]
        top = module.split(".")[0]
        if top == __name__.split(".")[0]:
            return module_name == module
        return module_name == top or module_name.startswith(top + ".")


_PLUGINS: dict[str, PluginSource] = {}
"""The team plug-ins this process has resolved, by path."""


def plugin_of(exc: BaseException) -> tuple[PluginSource, BaseException] | None:
    """The team plug-in whose code raised `exc`, or an error `exc` was raised from or while handling, and that
    error; None when no plug-in's code is on the way (dgrpo's own error)."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if (source := _innermost_plugin(error.__traceback__)) is not None:
            return source, error
        error = error.__cause__ or error.__context__
    return None


def _innermost_plugin(tb: TracebackType | None) -> PluginSource | None:
    """The plug-in of the innermost frame that is a plug-in's code: of the plug-ins sharing its package, the one
    whose factory the frame's code is (or is nested in), else the one resolved last."""
    found = None
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        owners = [s for s in _PLUGINS.values() if s.owns(module)]
        if owners:
            code = tb.tb_frame.f_code
            qualname = getattr(code, "co_qualname", code.co_name)
            found = next((s for s in owners if s.path == f"{module}:{qualname.split('.<locals>')[0]}"), owners[-1])
        tb = tb.tb_next
    return found


def last_line(exc: BaseException) -> str:
    """What a traceback's last line shows of `exc`: its type and the last line of its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


def build(factory: Callable[..., T], options: dict | None, options_field: str) -> T:
    """`factory(**options)`; options its signature refuses are a RegistryError naming `options_field`, while a
    TypeError raised inside the factory stays the factory's (a plug-in's own error, not a misspelled option)."""
    import inspect

    try:
        inspect.signature(factory).bind(**(options or {}))
    except TypeError as exc:
        raise RegistryError(f"config field '{options_field}': {exc}") from exc
    except ValueError:  # no signature to read (a builtin): the call itself says what is wrong
        pass
    return factory(**(options or {}))


def import_path(path: str, where: str) -> object:
    """The object at `package.module:attr` (attr may be dotted)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise RegistryError(f"{where}: {path!r} is not a 'package.module:factory' path")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"{where}: cannot import module {module_name!r} of {path!r}: {exc}") from exc
    except Exception as exc:  # the module's own code failed as it was imported: as permanent as a missing module
        raise RegistryError(f"{where}: importing module {module_name!r} of {path!r} failed: {last_line(exc)}"
                            ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RegistryError(f"{where}: module {module_name!r} has no attribute {attr!r} (from {path!r})")
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Factories of one kind by name; see the module docstring for how a name resolves."""

    def __init__(self, kind: str, config_field: str, builtins: dict[str, str], contributors: tuple[str, ...] = ()):
        """`contributors`: modules, by import path, whose `REGISTRY_ROWS[config_field]` (name -> path) are
        built-ins too, read on first lookup so that naming them imports none of their code at import time."""
        self.kind, self.config_field = kind, config_field
        self._own = dict(builtins)
        self._contributors = contributors
        self._merged: dict[str, str] | None = None
        self._entries: dict[str, T] = {}

    @property
    def _builtins(self) -> dict[str, str]:
        """The built-in rows, the contributors' read once; a contributed name clashing with another is an error."""
        if self._merged is None:
            merged = dict(self._own)
            for module in self._contributors:
                try:
                    rows = importlib.import_module(module).REGISTRY_ROWS.get(self.config_field, {})
                except (ImportError, AttributeError) as exc:
                    raise RegistryError(f"{self.kind} rows of {module!r} ({self.config_field}): {exc}") from exc
                if clash := sorted(rows.keys() & merged.keys()):
                    raise RegistryError(f"{self.kind} {clash[0]!r} of {module!r} is already a built-in "
                                        f"({self.config_field})")
                merged |= rows
            self._merged = merged
        return self._merged

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding `name`; refuses a name that is taken, or that looks like an import path."""
        if name in self._entries or name in self._builtins:
            raise RegistryError(f"{self.kind} {name!r} is already registered ({self.config_field}): choose another "
                                f"name")
        if ":" in name:
            raise RegistryError(f"{self.kind} name {name!r}: ':' is reserved for 'package.module:factory' paths")

        def add(factory: T) -> T:
            self._entries[name] = factory
            module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
            if module and qualname:
                _PLUGINS[f"{module}:{qualname}"] = PluginSource(self.kind, self.config_field, f"{module}:{qualname}")
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
            _PLUGINS.pop(name, None)  # last resolved, last listed
            _PLUGINS[name] = PluginSource(self.kind, self.config_field, name)
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
