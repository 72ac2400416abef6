"""Render manifests/ to one YAML stream: with kustomize (`kustomize build`, or `kubectl kustomize`) where one is
installed, else with the small subset of kustomize that manifests/kustomization.yaml uses (resources, namespace,
labels), so `make lint-manifests` validates the same objects on a machine without kustomize.

    python scripts/render_manifests.py manifests build/manifests.yaml
"""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "labels", "resources"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


def render_with_python(directory: Path) -> str:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED
    if unsupported:
        raise SystemExit(f"{directory / 'kustomization.yaml'}: fields {sorted(unsupported)} need a real kustomize "
                         "(install kustomize or kubectl)")
    labels: dict[str, str] = {}
    for entry in kustomization.get("labels", []):
        labels.update(entry.get("pairs", {}))
    docs = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if not path.is_file():
            raise SystemExit(f"{directory / 'kustomization.yaml'}: resource {resource} is not a file")
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            meta = doc.setdefault("metadata", {})
            if kustomization.get("namespace") and doc.get("kind") not in CLUSTER_SCOPED:
                meta["namespace"] = kustomization["namespace"]
            if labels:
                meta["labels"] = {**meta.get("labels", {}), **labels}
            if doc.get("kind") == "RoleBinding" and kustomization.get("namespace"):
                for subject in doc.get("subjects", []):
                    if subject.get("kind") == "ServiceAccount":
                        subject["namespace"] = kustomization["namespace"]
            docs.append(doc)
    return yaml.safe_dump_all(docs, sort_keys=True)


def render(directory: Path) -> tuple[str, str]:
    """(YAML, the tool that rendered it)."""
    for tool in (["kustomize", "build"], ["kubectl", "kustomize"]):
        if shutil.which(tool[0]):
            result = subprocess.run([*tool, str(directory)], capture_output=True, text=True)
            if result.returncode == 0:
                return result.stdout, " ".join(tool)
            print(f"{' '.join(tool)} failed, falling back to the built-in renderer:\n{result.stderr}", file=sys.stderr)
    return render_with_python(directory), "built-in renderer (resources, namespace, labels)"


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    directory, output = Path(sys.argv[1]), Path(sys.argv[2])
    text, tool = render(directory)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"rendered {directory} with {tool} -> {output} ({sum(1 for _ in yaml.safe_load_all(text))} objects)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
