"""Would a cluster accept these manifests? Schema, admission and object-metadata checks.

- `external-secrets.io/v1` ExternalSecret and `bitnami.com/v1alpha1` SealedSecret: the validators
  of the npm packages `@kubernetes-models/external-secrets` and `@kubernetes-models/sealed-secrets`
  (pinned in tests/js/package.json), run by `node tests/js/validate.mjs` in one batch.
- `v1` Secret: the Kubernetes OpenAPI schema of `KUBERNETES_VERSION` shipped by
  `kubernetes-validate`, in strict mode (unknown fields are errors).
- ExternalSecret: the rules ESO's admission webhook enforces beyond the schema.
- Every object: the apiserver's own metadata rules (name, namespace, label and annotation syntax),
  which no schema carries.

Any other apiVersion/kind is an error: nothing passes without being checked. Error strings name
the object, the path and the rule, never the value found there, so they are safe to print even for
a Secret holding real data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any, Final

import kubernetes_validate

JS_DIR: Final = Path(__file__).resolve().parents[1] / "js"
KUBERNETES_VERSION: Final = "1.30.0"
NODE_TIMEOUT_SECONDS: Final = 120.0
SETUP_HINT: Final = (
    "run the project's test setup (scripts/test), or install the validators alone with "
    "`npm ci --prefix tests/js`"
)

EXTERNAL_SECRET: Final = ("external-secrets.io/v1", "ExternalSecret")
SEALED_SECRET: Final = ("bitnami.com/v1alpha1", "SealedSecret")
SECRET: Final = ("v1", "Secret")
# the GitOps recipes of examples/gitops/ (Argo CD, Flux)
APPLICATION_SET: Final = ("argoproj.io/v1alpha1", "ApplicationSet")
FLUX_KUSTOMIZATION: Final = ("kustomize.toolkit.fluxcd.io/v1", "Kustomization")
GIT_REPOSITORY: Final = ("source.toolkit.fluxcd.io/v1", "GitRepository")
NODE_KINDS: Final = frozenset(
    {EXTERNAL_SECRET, SEALED_SECRET, APPLICATION_SET, FLUX_KUSTOMIZATION, GIT_REPOSITORY}
)
NPM_PACKAGES: Final = (
    "@kubernetes-models/external-secrets",
    "@kubernetes-models/sealed-secrets",
    "@kubernetes-models/argo-cd",
    "@kubernetes-models/flux-cd",
)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_GO_DURATION = re.compile(r"^[-+]?(0|((\d+(\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h))+)$")
_ANNOTATIONS_MAX_BYTES = 256 * 1024
_OWNED_BY_CONTROLLER = frozenset({"Merge", "None", "CreateOrMerge"})
_SA_NAME_ANNOTATION = "kubernetes.io/service-account.name"


class SchemaToolMissing(RuntimeError):
    """node or the npm validators are not installed: the test setup has not run."""


def validate_manifests(manifests: list[dict[str, Any]]) -> list[str]:
    """Every problem found in `manifests`, as `[index] Kind namespace/name: path rule` strings."""
    problems: list[str] = []
    batch: list[tuple[int, dict[str, Any]]] = []
    for index, manifest in enumerate(manifests):
        label = _label(index, manifest)
        if not isinstance(manifest, dict):
            problems.append(f"{label}: / must be an object")
            continue
        api_version, kind_name = manifest.get("apiVersion"), manifest.get("kind")
        kind = (
            api_version if isinstance(api_version, str) else None,
            kind_name if isinstance(kind_name, str) else None,
        )
        if kind in NODE_KINDS:
            batch.append((index, manifest))
        elif kind == SECRET:
            problems.extend(f"{label}: {p}" for p in _core_problems(manifest))
        else:
            problems.append(
                f"{label}: / no validator for apiVersion {kind[0]!r} kind {kind[1]!r} "
                f"(known: {', '.join(f'{a} {k}' for a, k in sorted(NODE_KINDS | {SECRET}))})"
            )
            continue
        problems.extend(f"{label}: {p}" for p in metadata_problems(manifest))
        if kind == EXTERNAL_SECRET:
            problems.extend(f"{label}: {p}" for p in eso_admission_problems(manifest))
    if batch:
        results = _run_node([m for _, m in batch])
        for (index, manifest), errors in zip(batch, results, strict=True):
            problems.extend(f"{_label(index, manifest)}: {e}" for e in errors)
    return problems


def _label(index: int, manifest: object) -> str:
    if not isinstance(manifest, dict):
        return f"[{index}] {type(manifest).__name__}"
    meta = manifest.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    return f"[{index}] {manifest.get('kind')} {meta.get('namespace')}/{meta.get('name')}"


def _core_problems(manifest: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/" + "/".join(str(p) for p in exc.absolute_path)
        if exc.validator in ("required", "additionalProperties"):
            rule = exc.message  # names only field names
        else:
            rule = f"violates {exc.validator} {json.dumps(exc.validator_value)[:120]}"
        return [f"{path} {rule} (Kubernetes {KUBERNETES_VERSION} schema)"]
    return []


def _run_node(manifests: list[dict[str, Any]]) -> list[list[str]]:
    node = shutil.which("node")
    if node is None:
        raise SchemaToolMissing(f"node is not on PATH: install Node.js, then {SETUP_HINT}")
    for package in NPM_PACKAGES:
        if not (JS_DIR / "node_modules" / package / "package.json").is_file():
            raise SchemaToolMissing(f"{JS_DIR / 'node_modules' / package} is missing: {SETUP_HINT}")
    proc = subprocess.run(
        [node, str(JS_DIR / "validate.mjs")],
        input=json.dumps(manifests),
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
        cwd=JS_DIR,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"validate.mjs exited {proc.returncode}: {proc.stderr.strip()[-2000:]}; {SETUP_HINT}"
        )
    results = json.loads(proc.stdout)
    if not isinstance(results, list) or [r.get("index") for r in results] != list(
        range(len(manifests))
    ):
        raise RuntimeError("validate.mjs answered a different number of results than it was sent")
    out: list[list[str]] = []
    for result in results:
        errors = [str(e) for e in result.get("errors", [])]
        if result.get("ok") is not True and not errors:
            errors = ["/ rejected without a reason"]
        elif result.get("ok") is True and errors:
            raise RuntimeError("validate.mjs reported ok with errors")
        out.append(errors)
    return out


def eso_admission_problems(manifest: dict[str, Any]) -> list[str]:
    """What ESO's validating webhook (and the Secret it writes) would refuse, beyond the schema."""
    spec = manifest.get("spec")
    if not isinstance(spec, dict):
        return []
    out: list[str] = []
    data = spec.get("data") or []
    data_from = spec.get("dataFrom") or []
    if not data and not data_from:
        out.append("/spec either data or dataFrom should be specified (ESO admission)")
    refresh = spec.get("refreshInterval")
    if isinstance(refresh, str) and not _GO_DURATION.fullmatch(refresh):
        out.append("/spec/refreshInterval is not a Go duration such as 1h0m0s (ESO decoding)")
    target = spec.get("target") or {}
    creation = target.get("creationPolicy", "Owner")  # the CRD's defaults
    deletion = target.get("deletionPolicy", "Retain")
    if deletion == "Delete" and creation in _OWNED_BY_CONTROLLER:
        out.append(
            f"/spec/target deletionPolicy Delete needs creationPolicy Owner or Orphan, "
            f"not {creation} (ESO admission)"
        )
    if deletion == "Merge" and creation == "None":
        out.append("/spec/target deletionPolicy Merge with creationPolicy None (ESO admission)")
    for i, item in enumerate(data_from):
        if not isinstance(item, dict):
            continue
        source = item.get("sourceRef") or {}
        kinds = [k for k in ("extract", "find") if item.get(k)]
        if source.get("generatorRef"):
            kinds.append("sourceRef.generatorRef")
        if len(kinds) > 1:
            out.append(
                f"/spec/dataFrom/{i} sets {' and '.join(kinds)}: extract, find, or generatorRef "
                "cannot be set at the same time (ESO admission)"
            )
        if not kinds and not source:
            out.append(f"/spec/dataFrom/{i} needs extract, find or sourceRef (ESO admission)")
        if source and not source.get("generatorRef") and not source.get("storeRef"):
            out.append(
                f"/spec/dataFrom/{i}/sourceRef needs generatorRef or storeRef (ESO admission)"
            )
    keys = [item.get("secretKey") for item in data if isinstance(item, dict)]
    for key, count in sorted(Counter(k for k in keys if isinstance(k, str)).items()):
        if count > 1:
            out.append(f"/spec/data secretKey {key!r} appears {count} times (ESO admission)")
    template = target.get("template") or {}
    templated = template.get("data") or {}
    for key in sorted(k for k in [*keys, *templated] if isinstance(k, str)):
        if len(key) > 253 or not _SECRET_KEY.match(key):
            out.append(f"/spec Secret key {key!r} is not a valid Secret data key")
    secret_type = template.get("type")
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    if secret_type == "bootstrap.kubernetes.io/token" or (
        secret_type == "kubernetes.io/service-account-token" and _SA_NAME_ANNOTATION in annotations
    ):
        out.append(f"/spec/target/template/type {secret_type} is refused (ESO admission)")
    for i, item in enumerate(template.get("templateFrom") or []):
        where = item.get("target", "Data") if isinstance(item, dict) else "Data"
        if where not in ("Data", "Annotations", "Labels"):
            out.append(f"/spec/target/template/templateFrom/{i}/target {where!r} (ESO admission)")
    return out


def metadata_problems(manifest: dict[str, Any]) -> list[str]:
    """The apiserver's ObjectMeta rules for a namespaced object, and for a template's metadata."""
    out = _meta_problems(manifest.get("metadata"), "/metadata", named=True)
    spec = manifest.get("spec")
    if isinstance(spec, dict):
        target = spec.get("target")
        holder = target if manifest.get("kind") == "ExternalSecret" else spec
        template = holder.get("template") if isinstance(holder, dict) else None
        if isinstance(template, dict) and template.get("metadata") is not None:
            where = (
                "/spec/target/template/metadata"
                if manifest.get("kind") == "ExternalSecret"
                else "/spec/template/metadata"
            )
            out.extend(_meta_problems(template["metadata"], where, named=False))
    return out


def _meta_problems(meta: object, where: str, *, named: bool) -> list[str]:
    if not isinstance(meta, dict):
        return [f"{where} is missing"] if named else []
    out: list[str] = []
    if named:
        name = meta.get("name")
        if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            out.append(f"{where}/name must be a DNS subdomain name")
        namespace = meta.get("namespace")
        if not isinstance(namespace, str) or len(namespace) > 63 or not _DNS_LABEL.match(namespace):
            out.append(
                f"{where}/namespace must be set to a DNS label (rendered objects are namespaced)"
            )
    labels = meta.get("labels") or {}
    for key, value in labels.items() if isinstance(labels, dict) else ():
        if problem := _qualified_key_problem(key):
            out.append(f"{where}/labels key {key!r}: {problem}")
        if (
            not isinstance(value, str)
            or len(value) > 63
            or (value and not _QUALIFIED_NAME.match(value))
        ):
            out.append(f"{where}/labels/{key} value must be a label value (at most 63 characters)")
    annotations = meta.get("annotations") or {}
    if isinstance(annotations, dict):
        size = 0
        for key, value in annotations.items():
            if problem := _qualified_key_problem(key):
                out.append(f"{where}/annotations key {key!r}: {problem}")
            size += len(str(key).encode()) + len(str(value).encode())
        if size > _ANNOTATIONS_MAX_BYTES:
            out.append(f"{where}/annotations total {size} bytes, over 256 KiB")
    return out


def _qualified_key_problem(key: object) -> str | None:
    if not isinstance(key, str):
        return "must be a string"
    prefix, _, name = key.rpartition("/")
    if "/" in prefix:
        return "at most one '/'"
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "prefix must be a DNS subdomain"
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return "name must be 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
    return None
