"""The run config by reference: stored in the artifact store before a run starts, named by its sha256.

KFP caps a run's parameters (10,000 bytes by default) and copies every parameter into each task's record in the
Argo Workflow, so the config never travels inline: run parameters carry its sha256 and every task loads it from
the store. Prompt lists are objects of their own, referenced from the config by sha256, so a 25,000-prompt file
costs the config a few bytes and is stored once however many runs use it.
"""

import json
from typing import Any

from dgrpo.config import RunConfig, config_from_dict
from dgrpo.config.loader import PROMPT_SECTIONS
from dgrpo.runs import lineage
from dgrpo.store import ArtifactRef, ArtifactStore, StoreError, sha256_bytes

CONFIG_KIND = "config"
PROMPTS_KIND = "prompts"
DEPLOYMENT_KIND = "deployment"
FORMAT = 1


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _parts(config: RunConfig) -> tuple[bytes, dict[str, bytes]]:
    """The stored config's bytes and the prompt lists' bytes it references, by section."""
    data = config.to_dict()
    prompts = {}
    for section in PROMPT_SECTIONS:
        prompts[section] = _canonical(data[section]["prompts"])
        data[section]["prompts"] = {"sha256": sha256_bytes(prompts[section]), "count": len(data[section]["prompts"])}
    return _canonical({"dgrpo_config": FORMAT, "config": data}), prompts


def put_config(store: ArtifactStore, config: RunConfig) -> ArtifactRef:
    """Store `config` and its prompt lists, with lineage records (the root of every lineage chain)."""
    data, prompts = _parts(config)
    prov = lineage.Provenance(stage="config", run_id="-", config_sha256=config.recipe_sha256(),
                              seeds={"seed": config.seed}, deployment_sha256=put_deployment(store, config).sha256)
    inputs = {}
    for section, body in prompts.items():
        inputs[f"{section}.prompts"] = ref = store.put(body, kind=PROMPTS_KIND, suffix=".json")
        lineage.record(store, ref, prov)
    ref = store.put(data, kind=CONFIG_KIND, suffix=".json")
    prov.inputs = inputs
    lineage.record(store, ref, prov)
    return ref


def put_deployment(store: ArtifactStore, config: RunConfig) -> ArtifactRef:
    """The deployment settings (`RunConfig.deployment_dict`) as an object: what lineage records beside the
    recipe hash."""
    return store.put(_canonical(config.deployment_dict()), kind=DEPLOYMENT_KIND, suffix=".json")


def object_ref(store: ArtifactStore, kind: str, sha256: str, suffix: str = ".json") -> ArtifactRef:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise StoreError(f"{kind} sha256 {sha256!r}: expected 64 lowercase hex digits")
    return ArtifactRef(kind=kind, uri=f"{store.uri.rstrip('/')}/objects/{sha256[:2]}/{sha256}{suffix}", sha256=sha256,
                       size=0)


def load_config(store: ArtifactStore, sha256: str) -> RunConfig:
    """The config `put_config` stored under `sha256`, with its prompt lists (every object hash-checked)."""
    try:
        doc = json.loads(store.get(object_ref(store, CONFIG_KIND, sha256)))
        data = doc["config"]
        if doc.get("dgrpo_config") != FORMAT:
            raise KeyError("dgrpo_config")
        for section in PROMPT_SECTIONS:
            pointer = data[section]["prompts"]
            data[section]["prompts"] = json.loads(store.get(object_ref(store, PROMPTS_KIND, pointer["sha256"])))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise StoreError(f"config {sha256} in {store.uri}: not a stored dgrpo config ({exc})") from exc
    return config_from_dict(data)
