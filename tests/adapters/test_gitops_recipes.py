"""The GitOps recipes of examples/gitops/ are tested, not prose: the Argo CD ApplicationSet and
the Flux GitRepository / Kustomizations pass the upstream schemas (`@kubernetes-models/argo-cd`,
`@kubernetes-models/flux-cd`, through tests/support/schema.py), they cover exactly the cluster folders
the example fleet renders, and `kubectl kustomize` builds every rendered folder into objects
that pass the SealedSecret / ExternalSecret schemas."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import yaml

from secretsync.fleet import load
from tests.support import schema

ROOT = Path(__file__).resolve().parents[2]
GITOPS = ROOT / "examples" / "gitops"
FLEET = ROOT / "examples" / "fleet"


def documents(folder: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def rendered_clusters() -> list[str]:
    fleet = load.load_fleet(FLEET)
    out = FLEET / fleet.output_dir
    return sorted(p.name for p in out.iterdir() if (p / "kustomization.yaml").is_file())


def kustomize(folder: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_recipes_pass_the_upstream_schemas() -> None:
    manifests = [
        d
        for folder in (GITOPS / "argocd", GITOPS / "flux")
        for d in documents(folder)
        if d.get("apiVersion") != "kustomize.config.k8s.io/v1beta1"
    ]
    kinds = sorted({(d["apiVersion"], d["kind"]) for d in manifests})
    assert kinds == sorted(
        [schema.APPLICATION_SET, schema.FLUX_KUSTOMIZATION, schema.GIT_REPOSITORY]
    )
    assert schema.validate_manifests(manifests) == []

    # the validators do refuse: a Kustomization without its source, an ApplicationSet
    # generator of the wrong type
    broken = copy.deepcopy(next(d for d in manifests if d["kind"] == "Kustomization"))
    del broken["spec"]["sourceRef"]
    appset = copy.deepcopy(next(d for d in manifests if d["kind"] == "ApplicationSet"))
    appset["spec"]["generators"] = "rendered/*"
    problems = schema.validate_manifests([broken, appset])
    assert any("sourceRef" in p for p in problems), problems
    assert any("/spec/generators" in p for p in problems), problems


def test_flux_has_one_kustomization_per_rendered_cluster_folder() -> None:
    clusters = rendered_clusters()
    built = kustomize(GITOPS / "flux")  # the folder applies as one kustomization
    [source] = [d for d in built if d["kind"] == "GitRepository"]
    paths = {
        d["spec"]["path"]: d for d in built if d["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
    }
    assert sorted(paths) == [f"./rendered/{c}" for c in clusters]
    for d in paths.values():
        assert d["spec"]["sourceRef"] == {
            "kind": "GitRepository",
            "name": source["metadata"]["name"],
        }
        assert d["spec"]["prune"] is True
    assert source["spec"]["ref"] == {"branch": "rendered"}


def test_argocd_generates_one_application_per_rendered_cluster_folder() -> None:
    [appset] = documents(GITOPS / "argocd")
    [generator] = appset["spec"]["generators"]
    [directory] = generator["git"]["directories"]
    fleet = load.load_fleet(FLEET)
    assert directory["path"] == f"{fleet.output_dir}/*"
    template = appset["spec"]["template"]
    assert template["spec"]["source"]["path"] == "{{.path.path}}"
    assert template["spec"]["destination"] == {"name": "{{.path.basename}}"}
    assert generator["git"]["revision"] == template["spec"]["source"]["targetRevision"]
    # what the generator matches: every rendered cluster folder, nothing else
    matched = sorted(p.name for p in (FLEET / fleet.output_dir).glob("*") if p.is_dir())
    assert matched == rendered_clusters()


def test_every_rendered_folder_builds_with_kubectl_kustomize() -> None:
    for cluster in rendered_clusters():
        objects = kustomize(FLEET / "rendered" / cluster)
        assert objects, cluster
        assert {o["kind"] for o in objects} <= {"SealedSecret", "ExternalSecret"}
        assert schema.validate_manifests(objects) == [], cluster
