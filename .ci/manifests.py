"""Offline validation of Ember's Kubernetes files (no cluster here).

Every YAML file under manifests/ and keda/ must parse. Each overlay in manifests/overlays/ is
rendered with kustomize, and every object it renders is validated: KEDA and Kubeflow Trainer
objects against their CRDs' JSON Schemas (strict: unknown fields fail), core objects with
kubernetes-validate --strict for Kubernetes 1.32. Kustomizations outside the overlays (the
Service Bus scaling) are rendered and validated the same way.

usage: python3 .ci/manifests.py KUSTOMIZE SCHEMA_DIR OUT_DIR
"""

import pathlib
import subprocess
import sys

import yaml

# kind -> JSON Schema file (from manifests/schemas/, unpacked by .ci/run).
CRD_SCHEMAS = {
    "ScaledObject": "scaledobject-keda.sh-v1alpha1.json",
    "ScaledJob": "scaledjob-keda.sh-v1alpha1.json",
    "TriggerAuthentication": "triggerauthentication-keda.sh-v1alpha1.json",
    "TrainJob": "trainjob-trainer.kubeflow.org-v1alpha1.json",
    "ClusterTrainingRuntime": "clustertrainingruntime-trainer.kubeflow.org-v1alpha1.json",
}
# Operators' kinds without a schema here: rendered and parsed only (see docs/aks.md).
UNCHECKED = {"RabbitmqCluster", "ServiceMonitor"}


def run(command):
    print("+", " ".join(str(c) for c in command[:4]), "..." if len(command) > 4 else "", flush=True)
    subprocess.run(command, check=True)


def main(kustomize, schemas, out):
    root = pathlib.Path(__file__).resolve().parent.parent
    files = sorted(p for d in ("manifests", "keda") for p in (root / d).rglob("*.yaml"))
    for path in files:
        list(yaml.safe_load_all(path.read_text()))
    print(f"{len(files)} YAML files parse")

    kustomizations = sorted((root / "manifests" / "overlays").iterdir()) + [root / "keda" / "servicebus"]
    for kustomization in kustomizations:
        name = kustomization.relative_to(root).as_posix().replace("/", "-")
        rendered = subprocess.run([kustomize, "build", kustomization], check=True,
                                  capture_output=True, text=True).stdout
        target = pathlib.Path(out) / name
        target.mkdir(parents=True, exist_ok=True)
        by_schema, core, unchecked = {}, [], []
        for index, doc in enumerate(d for d in yaml.safe_load_all(rendered) if d):
            kind = doc["kind"]
            path = target / f"{index:02d}-{kind}-{doc['metadata']['name']}.yaml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            if kind in CRD_SCHEMAS:
                by_schema.setdefault(CRD_SCHEMAS[kind], []).append(path)
            elif kind in UNCHECKED:
                unchecked.append(kind)
            elif "." in doc["apiVersion"].split("/")[0] and not doc["apiVersion"].startswith(("apps/", "batch/")):
                sys.exit(f"{kustomization}: no schema for {doc['apiVersion']} {kind}")
            else:
                core.append(path)
        print(f"== {kustomization.relative_to(root)}: {sum(map(len, by_schema.values())) + len(core) + len(unchecked)} objects")
        for schema, paths in sorted(by_schema.items()):
            run([sys.executable, "-m", "check_jsonschema", "--schemafile", pathlib.Path(schemas) / schema, *paths])
        if core:
            run([sys.executable, "-m", "kubernetes_validate", "-k", "1.32.0", "--strict", *core])
        if unchecked:
            print(f"parsed only (operator CRDs without a schema here): {', '.join(sorted(set(unchecked)))}")


if __name__ == "__main__":
    main(*sys.argv[1:])
