"""`dgrpo config show`: the effective config (after `base:` files and `--set`), field by field, each with its
default and its docstring.

The field docs are the attribute docstrings of the config dataclasses (a string right after a field), read from
their source with `ast`: Python keeps no such docstring at run time, and writing the docs twice would let them drift.
"""

import ast
import dataclasses
import functools
import inspect
import textwrap
from typing import Any

from dgrpo.config import RunConfig, config_from_dict


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass, by field name (a field without one is absent)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source (a frozen build): no docs
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for stmt, after in zip(body, body[1:], strict=False):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def config_fields(config: RunConfig) -> list[dict[str, Any]]:
    """Every leaf field of `config`: dotted path, value, default, whether it is the default, its doc."""
    defaults = config_from_dict({})
    out: list[dict[str, Any]] = []

    def walk(obj: Any, default: Any, prefix: str) -> None:
        docs = field_docs(type(obj))
        for f in dataclasses.fields(obj):
            value, base = getattr(obj, f.name), getattr(default, f.name, None)
            path = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                walk(value, base if type(base) is type(value) else type(value)(), f"{path}.")
                continue
            plain, plain_default = _plain(value), _plain(base)
            out.append({"field": path, "value": plain, "default": plain_default, "is_default": plain == plain_default,
                        "doc": docs.get(f.name, "")})

    walk(config, defaults, "")
    return out


def _plain(value: Any) -> Any:
    """JSON-ready: dataclasses as dicts (a dict of stage settings), everything else as it is."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def format_fields(rows: list[dict[str, Any]], source: str, recipe_sha256: str, only_set: bool = False) -> str:
    """One line per field (`*` where it differs from the default, with the default), its doc indented below."""
    changed = sum(not r["is_default"] for r in rows)
    lines = [f"# effective config of {source} (recipe {recipe_sha256[:12]}): {changed} of {len(rows)} fields set, "
             "marked *; the rest are defaults"]
    for r in rows:
        if only_set and r["is_default"]:
            continue
        mark = " " if r["is_default"] else "*"
        default = "" if r["is_default"] else f"   (default: {_text(r['default'])})"
        lines.append(f"{mark} {r['field']}: {_text(r['value'])}{default}")
        if r["doc"]:
            lines.append(f"      {r['doc']}")
    return "\n".join(lines)


def _text(value: Any, limit: int = 200) -> str:
    import json

    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit - 3] + "..."
