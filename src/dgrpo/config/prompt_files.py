"""Prompt lists read from a file: .txt (one a line), .jsonl (field "prompt") or .parquet (column "prompt").

In .txt and .jsonl files blank lines are skipped, and so are .txt lines starting with "#" (comments). Prompts are
stripped of surrounding whitespace; an empty prompt in a .jsonl or .parquet file is an error, not a skip, since
a record there was written on purpose.
"""

import hashlib
import io
import json
from pathlib import Path

SUFFIXES = (".txt", ".jsonl", ".parquet")


class PromptFileError(ValueError):
    """A prompt file is missing, unreadable or malformed; the message names the file (and line or row)."""


def read_prompts(path: str | Path) -> tuple[list[str], str]:
    """The prompts in `path` and the sha256 (hex) of the file's bytes."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise PromptFileError(f"file '{path}': unsupported suffix {path.suffix!r} (use {', '.join(SUFFIXES)})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PromptFileError(f"file '{path}': cannot read: {exc.strerror}") from exc
    parse = {".txt": _txt, ".jsonl": _jsonl, ".parquet": _parquet}[path.suffix]
    prompts = parse(data, path)
    if not prompts:
        raise PromptFileError(f"file '{path}': holds no prompts")
    return prompts, hashlib.sha256(data).hexdigest()


def _text(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"file '{path}': not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _txt(data: bytes, path: Path) -> list[str]:
    lines = (line.strip() for line in _text(data, path).splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _jsonl(data: bytes, path: Path) -> list[str]:
    prompts = []
    for number, line in enumerate(_text(data, path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"file '{path}' line {number}: invalid JSON: {exc.msg}") from exc
        if not isinstance(record, dict) or "prompt" not in record:
            raise PromptFileError(f"file '{path}' line {number}: expected an object with a 'prompt' field")
        prompts.append(_prompt(record["prompt"], f"file '{path}' line {number}"))
    return prompts


def _parquet(data: bytes, path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dgrpo.contracts.tables import read_parquet

    try:
        schema = pq.read_schema(io.BytesIO(data))
        if "prompt" not in schema.names:
            raise PromptFileError(f"file '{path}': no column 'prompt' (columns: {', '.join(schema.names)})")
        column = read_parquet(data, columns=["prompt"]).column("prompt")
    except pa.ArrowException as exc:
        raise PromptFileError(f"file '{path}': not a readable Parquet file: {exc}") from exc
    return [_prompt(value, f"file '{path}' row {row}") for row, value in enumerate(column.to_pylist())]


def _prompt(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PromptFileError(f"{where}: 'prompt' must be a non-empty string, got {value!r}")
    return value.strip()
