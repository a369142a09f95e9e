"""`seal` (values sealed for many clusters at once) and `unseal` (offline checks with the
controller's keys)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from secretsync.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Settings,
    UsageError,
    _cluster_option,
    _emit,
    _fail_config,
    _load,
    _selector,
    _selector_option,
    pass_settings,
)
from secretsync.core import errors
from secretsync.core.model import ANNOTATION_CLUSTER, Scope
from secretsync.core.values import SecretValue
from secretsync.delivery import seal
from secretsync.delivery.rendered import dump_yaml
from secretsync.fleet import load

if TYPE_CHECKING:
    pass


def _read_values(
    literals: tuple[str, ...], files: tuple[str, ...], stdin_key: str | None
) -> dict[str, SecretValue]:
    values: dict[str, SecretValue] = {}

    def put(key: str, value: SecretValue, flag: str) -> None:
        if problem := load.secret_key_problem(key):
            raise UsageError(f"{flag}: {key!r}: {problem}")
        if key in values:
            raise UsageError(f"{flag}: key {key!r} given twice")
        values[key] = value

    for item in literals:
        key, sep, text = item.partition("=")
        if not sep:
            raise UsageError("--from-literal takes KEY=VALUE")
        put(key, SecretValue.of(text), "--from-literal")
    for item in files:
        key, sep, path = item.partition("=")
        if not sep:
            raise UsageError("--from-file takes KEY=PATH")
        try:
            put(key, SecretValue(Path(path).read_bytes()), "--from-file")
        except OSError as exc:
            raise UsageError(f"--from-file: cannot read {path}: {exc.strerror}") from None
    if stdin_key is not None:
        put(stdin_key, SecretValue(sys.stdin.buffer.read()), "--from-stdin")
    if not values:
        raise UsageError("give at least one of --from-literal, --from-file or --from-stdin")
    return values


@click.command("seal")
@click.option("-f", "--fleet", "fleet_path", required=True, type=click.Path(file_okay=False))
@_cluster_option
@_selector_option
@click.option("--namespace", required=True)
@click.option("--name", required=True)
@click.option("--from-literal", "literals", multiple=True, metavar="KEY=VALUE")
@click.option("--from-file", "files", multiple=True, metavar="KEY=PATH")
@click.option("--from-stdin", "stdin_key", metavar="KEY", help="Read one value from stdin.")
@click.option(
    "--scope",
    type=click.Choice([s.value for s in Scope]),
    default=Scope.STRICT.value,
    show_default=True,
)
@click.option("--type", "secret_type", default="Opaque", show_default=True)
@click.option("--raw", is_flag=True, help="Print only the sealed values.")
@click.option(
    "--merge-into",
    type=click.Path(dir_okay=False),
    help="Merge into this file of SealedSecrets (one per cluster) and rewrite it in place.",
)
@pass_settings
def seal_command(
    settings: Settings,
    fleet_path: str,
    cluster: tuple[str, ...],
    selector: str | None,
    namespace: str,
    name: str,
    literals: tuple[str, ...],
    files: tuple[str, ...],
    stdin_key: str | None,
    scope: str,
    secret_type: str,
    raw: bool,
    merge_into: str | None,
) -> None:
    """Seal values for many clusters at once, each with its own certificate.

    Prints one SealedSecret per matching cluster (multi-document YAML), each annotated with
    its cluster. Values come from files or stdin; prefer those over --from-literal.
    """
    from secretsync.ops import fleetseal

    if not cluster and selector is None:
        raise UsageError("give --cluster NAME (repeatable) or --selector SELECTOR")
    if not load.is_dns_label(namespace):
        raise UsageError(f"--namespace: {namespace!r} is not a namespace name (a DNS label)")
    if not load.is_dns_subdomain(name):
        raise UsageError(f"--name: {name!r} is not a Secret name (a DNS subdomain)")
    fleet = _load(fleet_path)
    values = _read_values(literals, files, stdin_key)
    try:
        result = fleetseal.seal_for_clusters(
            fleet,
            names=cluster,
            selector=_selector(selector),
            namespace=namespace,
            name=name,
            values=values,
            scope=Scope(scope),
            secret_type=secret_type,
            now=datetime.now(UTC),
        )
    except errors.ConfigError as exc:
        _fail_config(exc)
    if merge_into:
        try:
            fleetseal.merge_into(Path(merge_into), result.manifests, scope=Scope(scope))
        except errors.ConfigError as exc:
            _fail_config(exc)
        click.echo(f"merged {len(result.manifests)} cluster(s) into {merge_into}", err=True)
    elif raw:
        encrypted = {
            m["metadata"]["annotations"][ANNOTATION_CLUSTER]: m["spec"]["encryptedData"]
            for m in result.manifests
        }
        if len(encrypted) == 1 and len(values) == 1:
            click.echo(next(iter(next(iter(encrypted.values())).values())), nl=False)
        else:
            _emit(settings, encrypted)
    elif settings.output == "json":
        _emit(settings, {"apiVersion": "v1", "kind": "List", "items": result.manifests})
    else:
        click.echo(
            "".join("---\n" + dump_yaml(m).decode("utf-8") for m in result.manifests), nl=False
        )
    for cluster_name, reason in result.failures.items():
        click.echo(f"failed: cluster {cluster_name}: {reason}", err=True)
    sys.exit(EXIT_FAILED if result.failures else EXIT_OK)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--private-key",
    "key_files",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False),
    help="PEM private key of the sealing controller (repeatable).",
)
@click.option("--show-values", is_flag=True, help="Print values; otherwise only which keys open.")
@pass_settings
def unseal(settings: Settings, file: str, key_files: tuple[str, ...], show_values: bool) -> None:
    """Check SealedSecrets offline with the controller's private key(s) (recovery, audits)."""
    keys = []
    for key_file in key_files:
        try:
            keys.extend(seal.load_private_keys(Path(key_file).read_bytes(), source=key_file))
        except (OSError, errors.SealError) as exc:
            raise UsageError(f"--private-key {key_file}: {exc}") from None
    try:
        docs = list(yaml.load_all(Path(file).read_bytes(), Loader=yaml.CSafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{file}: cannot read SealedSecrets ({type(exc).__name__})") from None
    out: list[dict[str, Any]] = []
    failed = False
    for index, doc in enumerate(docs):  # `index` counts every document of the file, from 0
        if not doc:
            continue
        meta = _mapping(doc, "metadata")
        entry: dict[str, Any] = {
            "index": index,
            "cluster": _mapping(meta, "annotations").get(ANNOTATION_CLUSTER),
            "object": f"{meta.get('namespace')}/{meta.get('name')}",
        }
        try:
            opened = seal.unseal_manifest(doc, keys)
            entry["keys"] = (
                {k: v.decode("utf-8", "backslashreplace") for k, v in opened.items()}
                if show_values
                else sorted(opened)
            )
        except errors.SealError as exc:
            entry["error"] = str(exc)
            failed = True
        out.append(entry)
    _emit(settings, out)
    sys.exit(EXIT_FAILED if failed else EXIT_OK)


def _mapping(node: object, key: str) -> dict[str, Any]:
    value = node.get(key) if isinstance(node, dict) else None
    return value if isinstance(value, dict) else {}
