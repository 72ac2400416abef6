"""The fine-tune's structure profile record: which artifact holds the measured profile its rounds take K from."""

import json

from dgrpo.runs import keys
from dgrpo.store import ArtifactRef, ArtifactStore


def structure_profile_ref(store: ArtifactStore, run_id: str) -> ArtifactRef | None:
    """The profile artifact the fine-tune's rounds use, None before the first is recorded."""
    key = keys.structure_profile_key(run_id)
    if not store.exists(key):
        return None
    return ArtifactRef.from_json(json.dumps(store.get_json(key)), f"record {key}")


def record_structure_profile(store: ArtifactStore, run_id: str, ref: ArtifactRef) -> ArtifactRef:
    """Record `ref` unless a profile is recorded already (create-if-absent); the recorded one, which every round
    uses: a process or a retried round that measured one too keeps the first."""
    store.flush()
    store.create_json(keys.structure_profile_key(run_id), json.loads(ref.to_json()))
    return structure_profile_ref(store, run_id) or ref
