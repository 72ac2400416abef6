"""`dgrpo lineage`, bounded: the chain from an artifact back through at most `depth` levels of inputs.

A fine-tune's adapter after round r was trained from round r-1's, so its whole chain is r levels deep and names
every round's tables; walking and hashing all of it reads the whole store. The view stops at `depth` levels (the
adapter, what trained it and where that came from, by default) and hashes objects only when asked. An object
`dgrpo gc` deleted is shown as pruned, with when, not flagged as missing.
"""

from dgrpo.runs import lineage
from dgrpo.runs.lineage import LineageRecord
from dgrpo.runtime.pruned import PrunedObject
from dgrpo.store import ArtifactStore

Entry = tuple[int, str, LineageRecord]


def walk(store: ArtifactStore, sha256: str, depth: int) -> tuple[list[Entry], int]:
    """Depth-first walk of the lineage graph from `sha256` down to `depth` levels, each artifact expanded once:
    the entries as `lineage.chain` gives them, and how many inputs lay below the limit (not read)."""
    seen: set[str] = set()
    out: list[Entry] = []
    cut = 0

    def visit(sha: str, name: str, level: int) -> None:
        nonlocal cut
        rec = lineage.read_record(store, sha)
        out.append((level, name, rec))
        if sha in seen:
            return
        seen.add(sha)
        if level >= depth:
            cut += len(rec.inputs)
            return
        for input_name, input_sha in sorted(rec.inputs.items()):
            visit(input_sha, input_name, level + 1)

    visit(sha256, "", 0)
    return out, cut


def split_problems(store: ArtifactStore, entries: list[Entry],
                   pruned: dict[str, PrunedObject]) -> tuple[dict[str, str], dict[str, str]]:
    """The chain's corrupt or missing objects, and apart from them those gc deleted (and recorded), by sha256."""
    problems = lineage.chain_problems(store, entries)
    gone = {sha: pruned[sha].describe() for sha in problems
            if sha in pruned and not store.exists(pruned[sha].key)}
    return {sha: p for sha, p in problems.items() if sha not in gone}, gone


def pruned_in(store: ArtifactStore, entries: list[Entry], pruned: dict[str, PrunedObject]) -> dict[str, str]:
    """Without reading objects: the chain's objects gc recorded as pruned and that are not there."""
    return {rec.sha256: pruned[rec.sha256].describe() for _, _, rec in entries
            if rec.sha256 in pruned and not store.exists(pruned[rec.sha256].key)}


def format_walk(entries: list[Entry], problems: dict[str, str], gone: dict[str, str], cut: int, depth: int) -> str:
    """The chain as an indented tree (`lineage.format_chain`'s lines): a problem flagged `!!`, a pruned object
    marked as such, and a last line saying how many inputs the depth limit left out."""
    seen: set[str] = set()
    lines = []
    for level, name, rec in entries:
        label = f"{name}: " if name else ""
        where = f" round {rec.round + 1}" if rec.round is not None else ""
        repeat = " (see above)" if rec.sha256 in seen and rec.inputs else ""
        note = (f"  !! {problems[rec.sha256]}" if rec.sha256 in problems
                else f"  -- {gone[rec.sha256]}" if rec.sha256 in gone else "")
        lines.append(f"{'  ' * level}{label}{rec.kind} {rec.sha256[:12]} <- {rec.stage}{where}"
                     f" config {rec.config_sha256[:12]} code {rec.code_version}{repeat}{note}")
        if level == 0 or not rec.inputs:
            lines.append(f"{'  ' * level}  uri {rec.uri}")
        seen.add(rec.sha256)
    if cut:
        lines.append(f"... {cut} inputs deeper than --depth {depth} not shown")
    return "\n".join(lines)
