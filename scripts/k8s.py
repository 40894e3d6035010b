"""Render and validate deploy/k8s without kustomize installed.

    .venv/bin/python scripts/k8s.py render deploy/k8s/overlays/cpu   # YAML on stdout
    .venv/bin/python scripts/k8s.py validate                         # every overlay (make k8s-validate)
    .venv/bin/python scripts/k8s.py envoy                            # regenerate the Envoy ConfigMap file

The renderer covers the part of kustomize these manifests use: `resources` (files and
folders with a kustomization.yaml), `patches` with `path` (strategic merge: lists of named
items merge by name, other lists are replaced), `images` (newName/newTag) and
`configMapGenerator` with `files` under `generatorOptions.disableNameSuffixHash`.
tests/test_k8s.py checks that its output equals `kubectl kustomize` where kubectl exists.
Validation: kubernetes-validate (the API schemas of KUBERNETES_VERSION, strict: unknown
fields are errors).
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.37.0"
SUPPORTED = {"apiVersion", "kind", "resources", "patches", "images", "configMapGenerator", "generatorOptions"}


def _merge(base, patch):
    """Strategic merge of `patch` into `base` (dicts by key; lists of dicts by `name`)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and base and patch
            and all(isinstance(i, dict) and "name" in i for i in base + patch)):
        out = [copy.deepcopy(i) for i in base]
        index = {item["name"]: n for n, item in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = _merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _key(doc: dict) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def render(folder: Path | str) -> list[dict]:
    """The resources a kustomization folder produces, in order."""
    folder = Path(folder)
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise ValueError(f"{folder}/kustomization.yaml: {sorted(unknown)} not supported by scripts/k8s.py")
    docs: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    options = kustomization.get("generatorOptions", {})
    for generator in kustomization.get("configMapGenerator", []):
        if not options.get("disableNameSuffixHash"):
            raise ValueError("configMapGenerator needs generatorOptions.disableNameSuffixHash here")
        data = {Path(f).name: (folder / f).read_text() for f in generator.get("files", [])}
        metadata = {"name": generator["name"]}
        if options.get("labels"):
            metadata["labels"] = dict(options["labels"])
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    by_key = {_key(d): n for n, d in enumerate(docs)}
    for patch in kustomization.get("patches", []):
        for body in yaml.safe_load_all((folder / patch["path"]).read_text()):
            target = _key(body)
            if target not in by_key:
                raise ValueError(f"patch {patch['path']}: no {target[0]} {target[1]} to patch")
            docs[by_key[target]] = _merge(docs[by_key[target]], body)
    for image in kustomization.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                name = container["image"].rsplit(":", 1)[0]
                if name == image["name"]:
                    tag = image.get("newTag") or container["image"].rsplit(":", 1)[1]
                    container["image"] = f"{image.get('newName', name)}:{tag}"
    return docs


def validate(docs: list[dict], version: str = KUBERNETES_VERSION) -> list[str]:
    """kubernetes-validate errors for every document ('kind/name: message'); [] = valid."""
    import kubernetes_validate

    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    return errors


def main(argv: list[str]) -> int:
    if argv[:1] == ["render"] and len(argv) == 2:
        print(yaml.safe_dump_all(render(argv[1]), sort_keys=False), end="")
        return 0
    if argv[:1] == ["validate"]:
        failed = 0
        for overlay in OVERLAYS:
            docs = render(K8S / "overlays" / overlay)
            errors = validate(docs)
            failed += len(errors)
            print(f"{overlay}: {len(docs)} resources, Kubernetes {KUBERNETES_VERSION} schemas (strict): "
                  + ("OK" if not errors else f"{len(errors)} error(s)"))
            for error in errors:
                print(f"  {error}")
        return 1 if failed else 0
    if argv[:1] == ["envoy"]:
        sys.path.insert(0, str(REPO))
        from gateway_envoy.stack import kubernetes_envoy_config

        (K8S / "base" / "envoy-config" / "envoy.yaml").write_text(kubernetes_envoy_config())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
