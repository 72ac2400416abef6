"""Fill the model-cache claim once, so that no stage pod downloads (`kubernetes.model_cache.offline: true`).

    python -m dgrpo.runtime.model_cache plan CONFIG           # the fill arguments a config needs (run anywhere)
    python -m dgrpo.runtime.model_cache fill --model REPO[@REV] ... --processor REPO ... --file OWNER/REPO/PATH ...
                                             [--dreamsim DIR:TYPE]

`fill` runs in the one-off Job of manifests/model-cache-fill.job.yaml, as UID 10001 with HF_HOME on the claim and
the Hub token (gated SD3.5-M, FLUX.1-dev) from a Secret in HF_TOKEN. Full models are what `from_pretrained` reads:
for a diffusers repo only the components of its model_index.json (no single-file checkpoints or ComfyUI text
encoders), safetensors over other weight formats, no precision variants; a processor is its config and tokenizer
files only. DreamSim's weights go to the embedder's cache_dir on the claim (docs/models.md), in the layout
`dgrpo.embedders.dreamsim` checks.
"""

import argparse
import inspect
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx", ".onnx_data",
                   ".gguf", ".tflite", ".ot", ".mlmodel", ".pb")
TORCH_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth")
VARIANT = re.compile(r"^[^.]+\.[A-Za-z0-9_]+(-\d{5}-of-\d{5})?\.(safetensors|bin)$")
"""A precision variant, e.g. diffusion_pytorch_model.fp16.safetensors: from_pretrained reads it only when asked."""
HUB_PARAMS = {"model": "model", "processor": "processor", "tokenizer": "processor", "checkpoint": "file",
              "med_config": "file", "head": "file"}
"""Reward factory parameters that name Hub objects, and what each is."""


@dataclass
class CachePlan:
    """What a config reads from the Hub and from the claim."""

    models: list[str] = field(default_factory=list)
    processors: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    dreamsim: str = ""
    local: list[str] = field(default_factory=list)
    """Local paths the config reads, which the fill cannot download (put them on the claim by hand)."""

    def add(self, kind: str, value: str, revision: str | None = None) -> None:
        if value.startswith(("/", ".", "~")) or Path(value).exists():
            self.local.append(value)
            return
        spec = f"{value}@{revision}" if revision and kind != "file" else value
        target = {"model": self.models, "processor": self.processors, "file": self.files}[kind]
        if spec not in target:
            target.append(spec)

    def arguments(self) -> list[str]:
        args = ["fill"]
        for flag, values in (("--model", self.models), ("--processor", self.processors), ("--file", self.files)):
            for value in values:
                args += [flag, value]
        return args + (["--dreamsim", self.dreamsim] if self.dreamsim else [])


def _reward_specs(name: str, options: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    if name != "multi":
        return [(name, options)]
    specs = [options.get("main") or {}, *(options.get("auxiliary") or {}).values()]
    return [pair for spec in specs for pair in _reward_specs(spec.get("name", ""), spec.get("options") or {})]


def plan_for(config) -> CachePlan:
    """The Hub models, processors and files `config` loads, and its DreamSim cache."""
    from dgrpo.rewards import REWARDS

    plan = CachePlan()
    if config.model.pretrained:
        plan.add("model", config.model.pretrained, config.model.revision)
    for name, options in _reward_specs(config.reward.name, dict(config.reward.options)):
        params = inspect.signature(REWARDS.get(name)).parameters
        if "model_name" in params:
            raise ValueError(f"config field 'reward.name': {name} loads open_clip weights by name, which the fill "
                             "does not know how to fetch; fill its cache by hand")
        values = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty} | options
        for param, kind in HUB_PARAMS.items():
            if isinstance(values.get(param), str) and values[param]:
                plan.add(kind, values[param], values.get("revision"))
    if config.cluster.embedder == "dreamsim":
        opts = config.cluster.embedder_options
        if not opts.get("cache_dir"):
            raise ValueError("config field 'cluster.embedder_options.cache_dir': dreamsim needs it (the claim)")
        plan.dreamsim = f"{opts['cache_dir']}:{opts.get('dreamsim_type', 'ensemble')}"
    return plan


def select_files(files: list[str], model_index: dict | None, processor_only: bool = False) -> list[str]:
    """The files of a repo that from_pretrained reads (see the module docstring)."""
    if processor_only:
        return sorted(f for f in files if not f.endswith(WEIGHT_SUFFIXES))
    if model_index is not None:
        components = {k for k, v in model_index.items() if not k.startswith("_") and isinstance(v, list)}
        files = [f for f in files if ("/" not in f and not f.endswith(WEIGHT_SUFFIXES))
                 or f.split("/", 1)[0] in components]
    by_folder: dict[str, list[str]] = {}
    for f in files:
        by_folder.setdefault(f.rsplit("/", 1)[0] if "/" in f else "", []).append(f)
    keep = []
    for folder_files in by_folder.values():
        weights = [f for f in folder_files if f.endswith(TORCH_WEIGHTS)]
        plain = [f for f in weights if not VARIANT.match(f.rsplit("/", 1)[-1])] or weights
        safetensors = [f for f in plain if f.endswith(".safetensors")]
        keep += [f for f in folder_files if not f.endswith(WEIGHT_SUFFIXES)] + (safetensors or plain)
    return sorted(keep)


def _fetch_repo(spec: str, processor_only: bool) -> str:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    repo, _, revision = spec.partition("@")
    files = HfApi().list_repo_files(repo, revision=revision or None)
    index = None
    if "model_index.json" in files and not processor_only:
        index = json.loads(Path(hf_hub_download(repo, "model_index.json", revision=revision or None)).read_text())
    allow = select_files(files, index, processor_only)
    return snapshot_download(repo, revision=revision or None, allow_patterns=allow)


def _fetch_dreamsim(spec: str) -> Path:
    import dreamsim
    import torch

    from dgrpo.embedders.dreamsim import check_dreamsim_cache

    cache_dir, _, dreamsim_type = spec.rpartition(":")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    hub_dir = torch.hub.get_dir()
    try:
        dreamsim.dreamsim(pretrained=True, device="cpu", cache_dir=cache_dir, dreamsim_type=dreamsim_type)
    finally:
        torch.hub.set_dir(hub_dir)
    return check_dreamsim_cache(cache_dir, dreamsim_type)


def check_writable(path: Path) -> None:
    probe = path / f".dgrpo-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"cannot write {path} as uid {os.getuid()} ({exc.strerror}): the claim must belong to "
                              "uid 10001, which the Job's own-cache init container sets") from exc


def fill(args: argparse.Namespace) -> None:
    if not os.environ.get("HF_HOME"):
        raise ValueError("HF_HOME is not set: it must point into the claim, e.g. /models/huggingface")
    check_writable(Path(os.environ["HF_HOME"]).parent)
    for spec in args.model:
        print(f"model {spec}: {_fetch_repo(spec, processor_only=False)}", flush=True)
    for spec in args.processor:
        print(f"processor {spec}: {_fetch_repo(spec, processor_only=True)}", flush=True)
    for spec in args.file:
        from huggingface_hub import hf_hub_download

        parts = spec.split("/")
        print(f"file {spec}: {hf_hub_download('/'.join(parts[:2]), '/'.join(parts[2:]))}", flush=True)
    if args.dreamsim:
        print(f"dreamsim {args.dreamsim}: {_fetch_dreamsim(args.dreamsim)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgrpo.runtime.model_cache", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    plan_cmd = sub.add_parser("plan", help="print the fill arguments of a config")
    plan_cmd.add_argument("config", type=Path)
    fill_cmd = sub.add_parser("fill", help="download into the cache (HF_HOME, the DreamSim cache_dir)")
    fill_cmd.add_argument("--model", action="append", default=[], help="REPO[@REVISION]: what from_pretrained reads")
    fill_cmd.add_argument("--processor", action="append", default=[], help="REPO: config and tokenizer files only")
    fill_cmd.add_argument("--file", action="append", default=[], help="OWNER/REPO/PATH: one file")
    fill_cmd.add_argument("--dreamsim", default="", help="CACHE_DIR:TYPE, e.g. /models/dreamsim:ensemble")
    args = parser.parse_args(argv)
    try:
        if args.command == "plan":
            from dgrpo.config import load_config

            plan = plan_for(load_config(args.config))
            print(" ".join(plan.arguments()))
            for path in plan.local:
                print(f"# not downloaded, put on the claim by hand: {path}", file=sys.stderr)
        else:
            fill(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
