"""The base of every typed run record: JSON in and out, keeping what a record does not know.

A record read from a store written by older (or newer) code may carry fields this version does not name: they ride
in `extra` and are written back unchanged. Fields listed in `OMITTED_WHEN_NONE` are left out of the JSON while
None, as the code before typed records left them out, so a record's bytes do not change with the types. Fields in
`REFS` are artifact references, `{kind, uri, sha256, size}` in JSON.
"""

import dataclasses
from typing import Any, ClassVar, Self, TypeVar

from dgrpo.store import ArtifactRef, ArtifactStore


def ref_dict(ref: ArtifactRef | None) -> dict | None:
    return None if ref is None else dataclasses.asdict(ref)


def ref_of(data: dict | None) -> ArtifactRef | None:
    return None if data is None else ArtifactRef(**data)


R = TypeVar("R", bound="Record")


class RecordError(ValueError):
    """A stored record is not the shape its key promises; the message names the record type and the field."""


@dataclasses.dataclass(kw_only=True)
class Record:
    """Subclasses are keyword-only dataclasses whose fields are the record's JSON keys; see the module docstring."""

    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    """Fields this version does not name, kept as read."""
    OMITTED_WHEN_NONE: ClassVar[tuple[str, ...]] = ()
    REFS: ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> dict[str, Any]:
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name in self.OMITTED_WHEN_NONE):
                continue
            out[f.name] = ref_dict(value) if f.name in self.REFS else value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        if not isinstance(data, dict):
            raise RecordError(f"{cls.__name__}: not a JSON object ({type(data).__name__})")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: (ref_of(v) if k in cls.REFS else v) for k, v in data.items() if k in names}
        unknown = {k: v for k, v in data.items() if k not in names}
        try:
            return cls(**known, extra=unknown)
        except TypeError as exc:
            raise RecordError(f"{cls.__name__}: {exc}") from exc


def read(store: ArtifactStore, key: str, kind: type[R]) -> R | None:
    """The record at `key` as `kind`, or None when there is none."""
    try:
        data = store.get_json(key)
    except FileNotFoundError:
        return None
    return kind.from_json(data)


def read_all(store: ArtifactStore, prefix: str, kind: type[R]) -> list[R]:
    """Every record under `prefix`, in key order (the keys sort by time or round)."""
    return [kind.from_json(store.get_json(k)) for k in store.list(prefix)]


def put(store: ArtifactStore, key: str, record: Record) -> None:
    store.put_json(key, record.to_json())


def create(store: ArtifactStore, key: str, record: Record) -> bool:
    """Create `record` at `key` unless one exists, atomically; True for the one writer that created it."""
    return store.create_json(key, record.to_json())
