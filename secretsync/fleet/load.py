"""The fleet repo → the model. The only module that parses fleet YAML.

It reads `secretsync.yaml` (kind Fleet), then every YAML file under the clusters and secrets
folders (kinds Cluster and FleetSecret, several documents per file). Every problem becomes a
`ConfigError` naming the repo-relative file, the 1-based line of the offending key and the
field; all problems of one load are reported together and nothing is returned.

Only files inside the repo are read as fleet content: a symlink or `..` that leaves it is
refused, files are capped in size, and YAML alias expansion is capped in nodes.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import yaml

from secretsync.core import errors, selectors, templating
from secretsync.core.model import (
    API_VERSION,
    SOPS_KEY_TYPES,
    Cluster,
    ControllerRef,
    DataEntry,
    DeleteLimit,
    Delivery,
    Fleet,
    FleetSecret,
    Kubeconfig,
    Layout,
    LiteralSpec,
    Operator,
    Origin,
    Overlay,
    Policies,
    Requirement,
    RestartRef,
    Scope,
    Selector,
    SopsSettings,
    SopsSpec,
    StoreRef,
    Target,
    ValueSpec,
    VaultAuth,
    VaultLimits,
    VaultSettings,
    VaultSpec,
    VaultTLS,
    VaultTransitKey,
)
from secretsync.delivery import seal
from secretsync.fleet import repopath
from secretsync.fleet.repopath import confine
from secretsync.sources import vaultaddress

FLEET_FILE: Final = "secretsync.yaml"
MAX_FILE_BYTES: Final = 1024 * 1024
MAX_NODES: Final = 200_000
MAX_FILES: Final = 20_000

# Names are checked with `fullmatch`: `$` would also accept a trailing newline ("web\n").
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_DURATION = re.compile(r"([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+")


def is_dns_label(text: str) -> bool:
    """A Kubernetes DNS label (RFC 1123): namespaces and cluster names."""
    return len(text) <= 63 and _DNS_LABEL.fullmatch(text) is not None


def is_dns_subdomain(text: str) -> bool:
    """A Kubernetes DNS subdomain (RFC 1123): object names."""
    return len(text) <= 253 and _DNS_SUBDOMAIN.fullmatch(text) is not None


def secret_key_problem(key: str) -> str | None:
    """Why `key` cannot be a key of a Secret's data (the API server's rules), or None."""
    if len(key) > 253 or not _SECRET_KEY.fullmatch(key):
        return "invalid Secret key (1-253 characters: alphanumerics, '-', '_', '.')"
    if key in (".", "..") or key.startswith(".."):
        # a key is a file name where the Secret is mounted: Kubernetes refuses these
        return "invalid Secret key (it may not be '.' or '..' nor start with '..')"
    return None


_STR = "tag:yaml.org,2002:str"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_NULL = "tag:yaml.org,2002:null"


# --- reading files safely --------------------------------------------------------------------


def read_fleet_file(root: Path, relative: str, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read one fleet file: confined to the repo, a regular file, capped in size."""
    path = confine(root, relative, file=relative)  # refuses FIFOs, sockets, devices unopened
    try:  # O_NONBLOCK, O_NOFOLLOW: a FIFO or a link swapped in since cannot block or redirect
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise errors.ConfigError("file not found", file=relative) from None
    except OSError as exc:
        raise errors.ConfigError(f"cannot read file ({exc.strerror})", file=relative) from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = repopath.special_kind(mode) or "a folder"
            raise errors.ConfigError(f"is {kind}, not a regular file", file=relative)
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise errors.ConfigError(f"cannot read file ({exc.strerror})", file=relative) from None
    if len(data) > max_bytes:
        raise errors.ConfigError(f"file is larger than the {max_bytes} byte limit", file=relative)
    return data


def _yaml_files(root: Path, folder: str) -> Iterator[str]:
    """Repo-relative YAML files under `folder`, sorted; refuses links that leave the repo."""
    base = confine(root, folder, file=FLEET_FILE, field="spec.layout")
    if not base.is_dir():
        return
    real_root = root.resolve()
    found: list[str] = []
    entries = 0  # every file and folder walked, YAML or not: the walk itself is bounded
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        entries += len(dirnames) + len(filenames)
        if entries > MAX_FILES:
            raise errors.ConfigError(
                f"more than {MAX_FILES} files and folders under {folder!r}", file=folder
            )
        for name in dirnames:  # os.walk does not follow them: refuse those that leave the repo
            link = os.path.join(dirpath, name)
            if os.path.islink(link):
                confine(real_root, os.path.relpath(link, real_root), file=folder)
        for name in filenames:
            if not name.endswith((".yaml", ".yml")):
                continue
            found.append(os.path.relpath(os.path.join(dirpath, name), real_root))
    yield from sorted(found)


def _output_folder(root: Path, relative: str, layout: Layout) -> None:
    """Refuse an output folder that leaves the repo, has a symlink on its path (the Git sink
    opens every folder down to it without following one, and would fail every cluster), or
    overlaps what the fleet is read from: rendering there would prune or shadow fleet files."""
    real = confine(root, relative)
    real_root = root.resolve()
    where = root
    for part in Path(relative).parts:
        where = where / part
        if where.is_symlink():
            raise errors.ConfigError(
                f"{os.path.relpath(where, root)!r} is a symlink: no symlink on the output "
                "folder's path is followed"
            )
        if not where.exists():
            break
    inputs = (FLEET_FILE, layout.clusters, layout.secrets, "sops", "certs", ".git")
    for name in inputs:
        try:
            other = (real_root / name).resolve()
        except (OSError, RuntimeError):  # a symlink loop: the loader reports it there
            continue
        if real == other or real in other.parents or other in real.parents:
            raise errors.ConfigError(
                f"{relative!r} overlaps {name!r}, which the fleet is read from: the output "
                "folder must be a folder of its own"
            )


# --- YAML with line numbers ------------------------------------------------------------------


def _compose(data: bytes, *, file: str) -> list[yaml.Node]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.ConfigError("file is not UTF-8 text", file=file) from None
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.CSafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else 0
        raise errors.ConfigError(
            f"invalid YAML: {exc.problem or exc.context}", file=file, line=line
        ) from None
    except yaml.YAMLError as exc:
        raise errors.ConfigError(f"invalid YAML: {type(exc).__name__}", file=file) from None
    docs = [
        n
        for n in nodes
        if n is not None and not (isinstance(n, yaml.ScalarNode) and n.tag == _NULL)
    ]
    for doc in docs:
        if (size := _expanded_size(doc, {})) > MAX_NODES:
            raise errors.ConfigError(
                f"document expands to {size} or more nodes, over the {MAX_NODES} limit "
                "(YAML alias bomb?)",
                file=file,
                line=doc.start_mark.line + 1,
            )
    return docs


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes the document would have with every alias expanded (linear time, memoised)."""
    if (known := memo.get(id(node))) is not None:
        return known
    memo[id(node)] = 1  # a cycle counts once
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            size += _expanded_size(child, memo)
            if size > MAX_NODES:
                break
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            size += _expanded_size(key, memo) + _expanded_size(value, memo)
            if size > MAX_NODES:
                break
    memo[id(node)] = size
    return size


@dataclass(slots=True)
class _Ctx:
    """Collects errors for one load; counts nodes to cap alias expansion."""

    file: str = ""
    errors: list[errors.ConfigError] = field(default_factory=list)
    nodes: int = 0
    root: Path | None = None  # the fleet repo: fleet paths are confined to it

    def error(self, node: yaml.Node | None, field: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.errors.append(errors.ConfigError(message, file=self.file, line=line, field=field))

    def count(self, node: yaml.Node) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise errors.ConfigError(
                f"document expands to more than {MAX_NODES} nodes (YAML alias bomb?)",
                file=self.file,
                line=node.start_mark.line + 1,
            )


class _Map:
    """A YAML mapping being read field by field; `done()` reports unknown fields."""

    def __init__(
        self, ctx: _Ctx, node: yaml.MappingNode, path: str, at: yaml.Node | None = None
    ) -> None:
        self.ctx = ctx
        self.node = node
        self.key = at  # the key this mapping is the value of: where a missing field is reported
        self.path = path
        self.entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        self.used: set[str] = set()
        for key_node, value_node in node.value:
            ctx.count(key_node)
            ctx.count(value_node)
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in (_STR, _INT):
                ctx.error(key_node, path, "keys must be strings")
                continue
            key = str(key_node.value)
            if key in self.entries:
                first = self.entries[key][0].start_mark.line + 1
                ctx.error(key_node, self.field(key), f"duplicate key (first on line {first})")
                continue
            self.entries[key] = (key_node, value_node)

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1

    def origin(self) -> Origin:
        return Origin(self.ctx.file, self.line)

    def key_node(self, key: str) -> yaml.Node | None:
        entry = self.entries.get(key)
        return entry[0] if entry else None

    def raw(self, key: str, *, required: bool = False) -> yaml.Node | None:
        self.used.add(key)
        entry = self.entries.get(key)
        if entry is None:
            if required:
                self.ctx.error(self.key or self.node, self.field(key), "required field is missing")
            return None
        value = entry[1]
        if isinstance(value, yaml.ScalarNode) and value.tag == _NULL:
            if required:
                self.ctx.error(entry[0], self.field(key), "required field is empty")
            return None
        return value

    def text(self, key: str, *, required: bool = False, scalar: bool = False) -> str | None:
        node = self.raw(key, required=required)
        if node is None:
            return None
        allowed = (_STR, _INT, _FLOAT, _BOOL) if scalar else (_STR,)
        if not isinstance(node, yaml.ScalarNode) or node.tag not in allowed:
            self.ctx.error(self.key_node(key), self.field(key), "must be a string")
            return None
        value = str(node.value)
        if required and value == "":
            self.ctx.error(self.key_node(key), self.field(key), "must not be empty")
            return None
        return value

    def flag(self, key: str) -> bool | None:
        node = self.raw(key)
        if node is None:
            return None
        if not isinstance(node, yaml.ScalarNode) or node.tag != _BOOL:
            self.ctx.error(self.key_node(key), self.field(key), "must be true or false")
            return None
        return str(node.value).lower() in ("true", "yes", "on")

    def number(self, key: str, *, integer: bool = False, minimum: float = 0) -> float | None:
        node = self.raw(key)
        if node is None:
            return None
        tags = (_INT,) if integer else (_INT, _FLOAT)
        if not isinstance(node, yaml.ScalarNode) or node.tag not in tags:
            kind = "an integer" if integer else "a number"
            self.ctx.error(self.key_node(key), self.field(key), f"must be {kind}")
            return None
        value = float(int(str(node.value), 0)) if node.tag == _INT else float(node.value)
        if value < minimum:
            self.ctx.error(self.key_node(key), self.field(key), f"must be at least {minimum:g}")
            return None
        return value

    def map(self, key: str, *, required: bool = False) -> _Map | None:
        node = self.raw(key, required=required)
        if node is None:
            return None
        if not isinstance(node, yaml.MappingNode):
            self.ctx.error(self.key_node(key), self.field(key), "must be a mapping")
            return None
        return _Map(self.ctx, node, self.field(key), self.key_node(key))

    def seq(self, key: str) -> list[tuple[yaml.Node, str]] | None:
        node = self.raw(key)
        if node is None:
            return None
        if not isinstance(node, yaml.SequenceNode):
            self.ctx.error(self.key_node(key), self.field(key), "must be a list")
            return None
        out = []
        for i, item in enumerate(node.value):
            self.ctx.count(item)
            out.append((item, f"{self.field(key)}[{i}]"))
        return out

    def str_list(self, key: str) -> list[tuple[str, yaml.Node]] | None:
        items = self.seq(key)
        if items is None:
            return None
        out: list[tuple[str, yaml.Node]] = []
        for item, path in items:
            if not isinstance(item, yaml.ScalarNode) or item.tag != _STR:
                self.ctx.error(item, path, "must be a string")
                continue
            out.append((str(item.value), item))
        return out

    def str_map(self, key: str) -> dict[str, tuple[str, yaml.Node]] | None:
        sub = self.map(key)
        if sub is None:
            return None
        out = {}
        for k, (knode, vnode) in sub.entries.items():
            sub.used.add(k)
            if not isinstance(vnode, yaml.ScalarNode) or vnode.tag != _STR:
                self.ctx.error(knode, sub.field(k), "must be a string (quote it)")
                continue
            out[k] = (str(vnode.value), knode)
        return out

    def done(self) -> None:
        for key, (knode, _) in self.entries.items():
            if key not in self.used:
                self.ctx.error(knode, self.field(key), "unknown field")


def _as_map(ctx: _Ctx, node: yaml.Node, path: str) -> _Map | None:
    ctx.count(node)
    if not isinstance(node, yaml.MappingNode):
        ctx.error(node, path, "must be a mapping")
        return None
    return _Map(ctx, node, path)


def _enum[E](m: _Map, key: str, choices: Callable[[str], E], names: list[str], *, default: E) -> E:
    value = m.text(key)
    if value is None:
        return default
    try:
        return choices(value)
    except ValueError:
        m.ctx.error(m.key_node(key), m.field(key), f"must be one of: {', '.join(names)}")
        return default


# --- kinds -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Header:
    kind: str
    name: str
    labels: dict[str, str]
    spec: _Map | None
    name_node: yaml.Node | None
    origin: Origin


def _header(ctx: _Ctx, node: yaml.Node) -> _Header | None:
    doc = _as_map(ctx, node, "")
    if doc is None:
        return None
    api = doc.text("apiVersion", required=True)
    if api is not None and api != API_VERSION:
        ctx.error(doc.key_node("apiVersion"), "apiVersion", f"must be {API_VERSION}")
    kind = doc.text("kind", required=True) or ""
    if kind and kind not in ("Fleet", "Cluster", "FleetSecret"):
        ctx.error(doc.key_node("kind"), "kind", "must be Fleet, Cluster or FleetSecret")
        kind = ""
    meta = doc.map("metadata", required=True)
    name = ""
    labels: dict[str, str] = {}
    name_node = None
    if meta is not None:
        name = meta.text("name", required=True) or ""
        name_node = meta.key_node("name")
        for key, (value, knode) in (meta.str_map("labels") or {}).items():
            problem = selectors.label_key_problem(key) or selectors.label_value_problem(value)
            if problem:
                ctx.error(knode, f"metadata.labels.{key}", problem)
            labels[key] = value
        meta.str_map("annotations")
        meta.done()
    spec = doc.map("spec", required=True)
    doc.done()
    return _Header(kind, name, labels, spec, name_node, Origin(ctx.file, doc.line))


def _selector(m: _Map | None) -> Selector:
    if m is None:
        return Selector()
    reqs: list[Requirement] = []
    for key, (value, knode) in (m.str_map("matchLabels") or {}).items():
        problem = selectors.label_key_problem(key) or selectors.label_value_problem(value)
        if problem:
            m.ctx.error(knode, f"{m.path}.matchLabels.{key}", problem)
        reqs.append(Requirement(key, Operator.IN, (value,)))
    for item, path in m.seq("matchExpressions") or []:
        expr = _as_map(m.ctx, item, path)
        if expr is None:
            continue
        key = expr.text("key", required=True) or ""
        if key and (problem := selectors.label_key_problem(key)):
            m.ctx.error(expr.key_node("key"), f"{path}.key", problem)
        op_text = expr.text("operator", required=True)
        op: Operator | None = None
        if op_text is not None:
            try:
                op = Operator(op_text)
            except ValueError:
                m.ctx.error(
                    expr.key_node("operator"),
                    f"{path}.operator",
                    f"must be one of: {', '.join(o.value for o in Operator)}",
                )
        values = [v for v, _ in expr.str_list("values") or []]
        if op in (Operator.IN, Operator.NOT_IN) and not values:
            m.ctx.error(item, f"{path}.values", f"operator {op} needs at least one value")
        if op in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
            m.ctx.error(expr.key_node("values"), f"{path}.values", f"operator {op} takes no values")
        expr.done()
        if op is not None and key:
            reqs.append(Requirement(key, op, tuple(values)))
    m.done()
    return Selector(tuple(reqs))


def _template_field(m: _Map, key: str, *, required: bool = True) -> str | None:
    value = m.text(key, required=required, scalar=key == "value")
    if value is not None:
        for problem in templating.check(value):
            m.ctx.error(m.key_node(key), m.field(key), problem)
    return value


def _value_spec(ctx: _Ctx, node: yaml.Node, path: str) -> ValueSpec | None:
    m = _as_map(ctx, node, path)
    if m is None:
        return None
    kinds = [k for k in ("vault", "sops", "value") if k in m.entries]
    if len(kinds) != 1:
        ctx.error(node, path, "must have exactly one of vault, sops or value")
        for k in kinds:
            m.used.add(k)
        m.done()
        return None
    spec: ValueSpec | None = None
    if kinds[0] == "value":
        value = _template_field(m, "value")
        spec = LiteralSpec(value) if value is not None else None
    elif kinds[0] == "vault":
        ref = m.map("vault")
        if ref is not None:
            path_ = _template_field(ref, "path")
            key = _template_field(ref, "key")
            version = ref.number("version", integer=True, minimum=1)
            mount = ref.text("mount")
            if path_ and (path_.startswith("/") or ".." in path_.split("/")):
                ctx.error(ref.key_node("path"), ref.field("path"), "must be a path in the mount")
            if mount is not None and (not mount or mount.startswith("/") or ".." in mount):
                ctx.error(ref.key_node("mount"), ref.field("mount"), "must be a mount name")
            ref.done()
            if path_ and key:
                spec = VaultSpec(
                    path_,
                    key,
                    int(version) if version is not None else None,
                    mount.strip("/") if mount else None,
                )
    else:
        ref = m.map("sops")
        if ref is not None:
            file = _template_field(ref, "file")
            key = _template_field(ref, "key")
            if file and not templating.has_template(file):
                try:  # symlinks too; templated paths are confined per cluster by `plan`
                    confine(ctx.root or Path("/"), file)
                except errors.ConfigError as exc:
                    ctx.error(ref.key_node("file"), ref.field("file"), exc.message)
            elif file and (file.startswith("/") or ".." in Path(file).parts):
                ctx.error(ref.key_node("file"), ref.field("file"), "must stay inside the repo")
            ref.done()
            if file and key:
                spec = SopsSpec(file, key)
    m.done()
    return spec


def _data(m: _Map, key: str, *, required: bool) -> dict[str, DataEntry]:
    sub = m.map(key, required=required)
    out: dict[str, DataEntry] = {}
    if sub is None:
        return out
    for name, (knode, vnode) in sub.entries.items():
        sub.used.add(name)
        if problem := secret_key_problem(name):
            m.ctx.error(knode, sub.field(name), problem)
            continue
        spec = _value_spec(m.ctx, vnode, sub.field(name))
        if spec is not None:
            out[name] = DataEntry(spec, Origin(m.ctx.file, knode.start_mark.line + 1))
    if required and not sub.entries:
        m.ctx.error(m.key_node(key), m.field(key), "must have at least one key")
    return out


def _fleet(ctx: _Ctx, header: _Header, root: Path) -> Fleet:
    spec = header.spec
    kwargs: dict[str, object] = {}
    if spec is not None:
        defaults = spec.map("defaults")
        if defaults is not None:
            kwargs["default_delivery"] = _enum(
                defaults,
                "delivery",
                Delivery,
                [d.value for d in Delivery],
                default=Delivery.SEALED,
            )
            defaults.done()
        inputs = Layout()
        layout = spec.map("layout")
        if layout is not None:
            inputs = kwargs["layout"] = Layout(
                clusters=layout.text("clusters") or "clusters",
                secrets=layout.text("secrets") or "secrets",
            )
            layout.done()
        output = spec.map("output")
        if output is not None:
            out_dir = output.text("dir")
            if out_dir is not None:
                try:
                    _output_folder(root, out_dir, inputs)
                    kwargs["output_dir"] = out_dir.rstrip("/")
                except errors.ConfigError as exc:
                    ctx.error(output.key_node("dir"), output.field("dir"), exc.message)
            output.done()
        sources = spec.map("sources")
        if sources is not None:
            vault = sources.map("vault")
            if vault is not None:
                kwargs["vault"] = _vault(vault)
            elif "vault" in sources.entries:
                kwargs["vault"] = VaultSettings()
            sops = sources.map("sops")
            if sops is not None:
                kwargs["sops"] = _sops(sops)
            sources.done()
        policies = spec.map("policies")
        if policies is not None:
            forbidden = policies.str_list("forbiddenTypes")
            allow_cw = policies.flag("allowClusterWide")
            limit = _delete_limit(policies)
            kwargs["policies"] = Policies(
                forbidden_types=tuple(v for v, _ in forbidden)
                if forbidden is not None
                else Policies().forbidden_types,
                allow_cluster_wide=True if allow_cw is None else allow_cw,
                delete_limit=limit or Policies().delete_limit,
            )
            policies.done()
        spec.done()
    return Fleet(name=header.name, root=root, origin=header.origin, **kwargs)  # type: ignore[arg-type]


_PERCENT: Final = re.compile(r"(\d{1,3})%")


def _delete_limit(m: _Map) -> DeleteLimit | None:
    """`deleteLimit`: a count of objects (0 or more) or a percentage string such as "25%"."""
    node = m.raw("deleteLimit")
    if node is None:
        return None
    if isinstance(node, yaml.ScalarNode) and node.tag == _INT:
        count = int(str(node.value), 0)
        if count >= 0:
            return DeleteLimit(count=count)
    elif isinstance(node, yaml.ScalarNode) and (found := _PERCENT.fullmatch(str(node.value))):
        percent = int(found.group(1))
        if percent <= 100:
            return DeleteLimit(percent=percent)
    m.ctx.error(
        m.key_node("deleteLimit"),
        m.field("deleteLimit"),
        'must be a count of objects (0 or more) or a percentage such as "25%"',
    )
    return None


_VAULT_ADDRESS = re.compile(r"https?://[^\s/?#@]+(?:/[^\s?#@]*)?")
_KEY_PREFIX = re.compile(r"[^\s\x00-\x1f\x7f]+")
_CLOUD_KEYS: tuple[tuple[str, str, str], ...] = (
    # (key type, Fleet field, what an entry names)
    ("kms", "awsKms", "a KMS key or role ARN"),
    ("gcp_kms", "gcpKms", "a GCP KMS resource id"),
    ("azure_kv", "azureKeyVault", "an Azure Key Vault key URL"),
)


def _sops(m: _Map) -> SopsSettings:
    """`sources.sops`: limits, and the key sources SOPS files may name (checked before sops
    runs, see `sopskeys`)."""
    timeout = m.number("timeoutSeconds", minimum=1)
    max_bytes = m.number("maxFileBytes", integer=True, minimum=1)
    key_types = SopsSettings().key_types
    listed = m.str_list("keyTypes")
    if listed is not None:
        seen: set[str] = set()
        for name, node in listed:
            if name not in SOPS_KEY_TYPES:
                m.ctx.error(
                    node, m.field("keyTypes"), f"must be one of: {', '.join(SOPS_KEY_TYPES)}"
                )
            elif name in seen:
                m.ctx.error(node, m.field("keyTypes"), f"{name!r} is listed twice")
            seen.add(name)
        key_types = frozenset(seen & set(SOPS_KEY_TYPES))
    transit: list[VaultTransitKey] = []
    for item, path in m.seq("vaultTransit") or ():
        entry = _as_map(m.ctx, item, path)
        if entry is None:
            continue
        address = entry.text("address", required=True)
        if address is not None and not _VAULT_ADDRESS.fullmatch(address):
            m.ctx.error(
                entry.key_node("address"),
                entry.field("address"),
                "must be an http(s) URL without credentials, query or fragment, written as the "
                "SOPS files name it (e.g. https://vault.example:8200)",
            )
        engine_path = entry.text("enginePath")
        key_name = entry.text("keyName")
        entry.done()
        if address is not None:
            transit.append(
                VaultTransitKey(address=address, engine_path=engine_path, key_name=key_name)
            )
    _needs_list(m, key_types, "hc_vault", "vaultTransit")
    clouds: dict[str, tuple[str, ...]] = {}
    for key_type, field_name, what in _CLOUD_KEYS:
        names: list[str] = []
        for name, node in m.str_list(field_name) or ():
            if not _KEY_PREFIX.fullmatch(name):
                m.ctx.error(node, m.field(field_name), f"must be {what} or a prefix of one")
                continue
            names.append(name)
        clouds[field_name] = tuple(names)
        _needs_list(m, key_types, key_type, field_name)
    m.done()
    return SopsSettings(
        timeout_seconds=timeout or 30.0,
        max_file_bytes=int(max_bytes) if max_bytes else 5 * 1024 * 1024,
        key_types=key_types,
        vault_transit=tuple(transit),
        aws_kms=clouds["awsKms"],
        gcp_kms=clouds["gcpKms"],
        azure_key_vault=clouds["azureKeyVault"],
    )


def _needs_list(m: _Map, key_types: frozenset[str], key_type: str, field_name: str) -> None:
    """A network key type is allowed only with the list naming where it may go, and the
    other way round: neither may be given without the other."""
    node = m.entries.get(field_name)
    listed = node is not None and isinstance(node[1], yaml.SequenceNode) and bool(node[1].value)
    if key_type in key_types and not listed:
        m.ctx.error(
            m.key_node("keyTypes"),
            m.field(field_name),
            f"keyTypes allows {key_type}: list in {field_name} every key SOPS files may name",
        )
    elif key_type not in key_types and node is not None:
        m.ctx.error(
            m.key_node(field_name),
            m.field(field_name),
            f"{field_name} is given but keyTypes does not allow {key_type}",
        )


def _vault(m: _Map) -> VaultSettings:
    auth = m.map("auth")
    auth_kwargs: dict[str, str | None] = {}
    if auth is not None:
        method = auth.text("method") or "token"
        if method not in ("token", "approle", "kubernetes"):
            m.ctx.error(
                auth.key_node("method"),
                auth.field("method"),
                "must be one of: token, approle, kubernetes",
            )
        auth_kwargs["method"] = method
        for yaml_key, attr in (
            ("role", "role"),
            ("roleId", "role_id"),
            ("secretIdEnv", "secret_id_env"),
            ("mountPath", "mount_path"),
        ):
            auth_kwargs[attr] = auth.text(yaml_key)
        for yaml_key, attr in (
            ("tokenFile", "token_file"),
            ("roleIdFile", "role_id_file"),
            ("secretIdFile", "secret_id_file"),
            ("jwtFile", "jwt_file"),
        ):
            auth_kwargs[attr] = _machine_path(auth, yaml_key)
        if method == "approle" and not (auth_kwargs["role_id"] or auth_kwargs["role_id_file"]):
            m.ctx.error(auth.node, auth.field("roleId"), "approle needs roleId or roleIdFile")
        if method == "approle" and not (
            auth_kwargs["secret_id_file"] or auth_kwargs["secret_id_env"]
        ):
            m.ctx.error(
                auth.node, auth.field("secretIdFile"), "approle needs secretIdFile or secretIdEnv"
            )
        if method == "kubernetes" and not auth_kwargs["role"]:
            m.ctx.error(auth.node, auth.field("role"), "kubernetes auth needs a role")
        auth.done()
    tls = m.map("tls")
    tls_settings = VaultTLS()
    if tls is not None:
        tls_settings = VaultTLS(
            ca_file=tls.text("caFile"),
            client_cert_file=tls.text("clientCertFile"),
            client_key_file=tls.text("clientKeyFile"),
            insecure=tls.flag("insecure") or False,
        )
        tls.done()
    address = m.text("address")
    if address is not None and (
        problem := vaultaddress.form_problem(address)
        or vaultaddress.plain_http_problem(address.strip(), insecure=tls_settings.insecure)
    ):
        m.ctx.error(m.key_node("address"), m.field("address"), problem)
    limits = m.map("limits")
    limit_settings = VaultLimits()
    if limits is not None:
        concurrency = limits.number("concurrency", integer=True, minimum=1)
        rps = limits.number("requestsPerSecond", minimum=0.1)
        timeout = limits.number("timeoutSeconds", minimum=0.1)
        limit_settings = VaultLimits(
            concurrency=int(concurrency) if concurrency else 32,
            requests_per_second=rps or 500.0,
            timeout_seconds=timeout or 10.0,
        )
        limits.done()
    kv_version = m.number("kvVersion", integer=True, minimum=1)
    if kv_version is not None and kv_version not in (1, 2):
        m.ctx.error(m.key_node("kvVersion"), m.field("kvVersion"), "must be 1 or 2")
    settings = VaultSettings(
        address=address,
        namespace=m.text("namespace"),
        kv_mount=(m.text("kvMount") or "secret").strip("/"),
        kv_version=int(kv_version) if kv_version in (1, 2) else None,
        auth=VaultAuth(**auth_kwargs),  # type: ignore[arg-type]
        tls=tls_settings,
        limits=limit_settings,
    )
    m.done()
    return settings


def _cluster(ctx: _Ctx, header: _Header, fleet: Fleet) -> Cluster | None:
    spec = header.spec
    if not _DNS_LABEL.fullmatch(header.name) or len(header.name) > 63:
        ctx.error(
            header.name_node,
            "metadata.name",
            "cluster name must be a DNS label (lowercase alphanumerics and '-', at most 63)",
        )
    if spec is None:
        return None
    delivery = _enum(
        spec, "delivery", Delivery, [d.value for d in Delivery], default=fleet.default_delivery
    )
    cert_file: str | None = None
    cert_sha256: str | None = None
    controller: ControllerRef | None = None
    sealed = spec.map("sealedSecrets")
    if sealed is not None:
        cert_file = sealed.text("certFile")
        cert_ok = cert_file is not None
        if cert_file is not None:
            try:
                confine(fleet.root, cert_file)
            except errors.ConfigError as exc:
                cert_ok = False
                ctx.error(sealed.key_node("certFile"), sealed.field("certFile"), exc.message)
        pin = sealed.text("certificateSha256")
        if pin is not None:
            cert_sha256 = _pinned(ctx, sealed, pin, cert_file if cert_ok else None, fleet.root)
        ctrl = sealed.map("controller")
        if ctrl is not None:
            controller = ControllerRef(
                namespace=ctrl.text("namespace") or "kube-system",
                name=ctrl.text("name") or "sealed-secrets-controller",
            )
            ctrl.done()
        sealed.done()
    if delivery is Delivery.SEALED and cert_file is None:
        if controller is not None:
            # the controller is where the certificate comes from: `cluster refresh-cert` and
            # `serve --git-push` fetch it into the file of the usual name
            cert_file = f"certs/{header.name}.pem"
            try:  # fetched and written there later: it must not lead out of the repo either
                confine(fleet.root, cert_file)
            except errors.ConfigError as exc:
                ctx.error(
                    sealed.key_node("controller") if sealed else None,
                    spec.field("sealedSecrets.controller"),
                    exc.message,
                )
        else:
            ctx.error(
                spec.key_node("sealedSecrets") or spec.node,
                spec.field("sealedSecrets.certFile"),
                "a sealed cluster needs a certificate file, or the controller to fetch it from "
                "(run `secretsync cluster add` to fetch it)",
            )
    store_ref = StoreRef()
    external = spec.map("externalSecrets")
    if external is not None:
        ref = external.map("storeRef")
        if ref is not None:
            kind = ref.text("kind") or "ClusterSecretStore"
            if kind not in ("ClusterSecretStore", "SecretStore"):
                ctx.error(
                    ref.key_node("kind"),
                    ref.field("kind"),
                    "must be ClusterSecretStore or SecretStore",
                )
            store_ref = StoreRef(kind=kind, name=ref.text("name", required=True) or "vault")
            ref.done()
        external.done()
    kubeconfig = None
    kube = spec.map("kubeconfig")
    if kube is not None:
        secret_ref = kube.map("secretRef")
        sref: dict[str, str | None] = {}
        if secret_ref is not None:
            sref = {
                "secret_namespace": secret_ref.text("namespace", required=True),
                "secret_name": secret_ref.text("name", required=True),
                "secret_key": secret_ref.text("key") or "kubeconfig",
            }
            secret_ref.done()
        in_cluster = kube.flag("inCluster") or False
        path = _machine_path(kube, "path")
        given = sum(1 for x in (secret_ref, path, in_cluster or None) if x)
        if given != 1:
            ctx.error(
                kube.node, kube.path, "must have exactly one of secretRef, path or inCluster: true"
            )
        kubeconfig = Kubeconfig(
            path=path,
            context=kube.text("context"),
            in_cluster=in_cluster,
            **sref,  # type: ignore[arg-type]
        )
        kube.done()
    allowed = spec.str_list("allowedNamespaces")
    if allowed is not None:
        for ns, node in allowed:
            if not _DNS_LABEL.fullmatch(ns) or len(ns) > 63:
                ctx.error(node, "spec.allowedNamespaces", f"{ns!r} is not a valid namespace name")
    apply = spec.flag("apply") or False
    create_ns = spec.flag("createNamespaces") or False
    spec.done()
    return Cluster(
        name=header.name,
        labels=header.labels,
        delivery=delivery,
        origin=header.origin,
        cert_file=cert_file,
        cert_sha256=cert_sha256,
        controller=controller,
        store_ref=store_ref,
        kubeconfig=kubeconfig,
        apply=apply,
        allowed_namespaces=tuple(ns for ns, _ in allowed) if allowed is not None else None,
        create_namespaces=create_ns,
    )


def _machine_path(m: _Map, key: str) -> str | None:
    """A credential path on the machine secretsync runs on (a kubeconfig, a Vault token, JWT
    or AppRole file). It must be absolute and lie outside the fleet repo: the repo's writers
    must not choose what secretsync reads as a credential, nor a kubeconfig whose server,
    files and credential plugins secretsync would use. An error keeps the text, so that one
    mistake is reported once."""
    text = m.text(key)
    if text is None:
        return None
    if not os.path.isabs(text):
        m.ctx.error(
            m.key_node(key),
            m.field(key),
            f"{text!r} must be an absolute path: a file of the machine secretsync runs on, "
            "outside the fleet repo",
        )
    elif m.ctx.root is not None:
        root = m.ctx.root.resolve()
        try:
            real = Path(text).resolve()
        except (OSError, RuntimeError):  # a symlink loop: not inside the repo, and not usable
            return text
        if real == root or root in real.parents:
            m.ctx.error(
                m.key_node(key),
                m.field(key),
                f"{text!r} lies inside the fleet repo: credentials and kubeconfigs are the "
                "operator's files on the machine, never fleet content",
            )
    return text


def _pinned(ctx: _Ctx, sealed: _Map, pin: str, cert_file: str | None, root: Path) -> str | None:
    """Check `sealedSecrets.certificateSha256` against the certificate file; the normalised
    pin, or None (with an error) when it is malformed or does not match."""
    node, field = sealed.key_node("certificateSha256"), sealed.field("certificateSha256")
    expected = seal.normalize_sha256(pin)
    if expected is None:
        ctx.error(node, field, "must be a SHA-256 fingerprint: 64 hex digits (colons allowed)")
        return None
    if cert_file is None:
        if "certFile" not in sealed.entries:
            ctx.error(node, field, "pins the certificate of certFile, which is not set")
        return None
    try:
        actual = seal.certificate_sha256(read_fleet_file(root, cert_file), source=cert_file)
        seal.check_pin(actual, expected, source=cert_file)
    except errors.ConfigError as exc:
        ctx.error(node, field, f"{cert_file}: {exc.message}")
        return None
    except errors.SealError as exc:
        ctx.error(node, field, str(exc))
        return None
    return expected


def _target(ctx: _Ctx, m: _Map | None) -> Target | None:
    if m is None:
        return None
    name = m.text("name", required=True)
    namespace = m.text("namespace", required=True)
    if name and (len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name)):
        ctx.error(m.key_node("name"), m.field("name"), "must be a DNS subdomain name")
    if namespace and (len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace)):
        ctx.error(m.key_node("namespace"), m.field("namespace"), "must be a DNS label")
    type_ = m.text("type") or "Opaque"
    scope = _enum(m, "scope", Scope, [s.value for s in Scope], default=Scope.STRICT)
    label_nodes = m.str_map("labels") or {}
    annotation_nodes = m.str_map("annotations") or {}
    for key, (value, knode) in label_nodes.items():
        if problem := selectors.label_key_problem(key) or selectors.label_value_problem(value):
            ctx.error(knode, f"{m.field('labels')}.{key}", problem)
    for key, (_, knode) in annotation_nodes.items():
        if problem := selectors.label_key_problem(key):
            ctx.error(
                knode, f"{m.field('annotations')}.{key}", problem.replace("label", "annotation")
            )
    if sum(len(k) + len(v) for k, (v, _) in annotation_nodes.items()) > 128 * 1024:
        ctx.error(m.key_node("annotations"), m.field("annotations"), "annotations exceed 128 KiB")
    labels = {k: v for k, (v, _) in label_nodes.items()}
    annotations = {k: v for k, (v, _) in annotation_nodes.items()}
    for key in labels:
        if key.startswith("secretsync.dev/") or key == "app.kubernetes.io/managed-by":
            ctx.error(m.key_node("labels"), m.field("labels"), f"{key!r} is reserved")
    for key in annotations:
        if key.startswith(("secretsync.dev/", "sealedsecrets.bitnami.com/")):
            ctx.error(m.key_node("annotations"), m.field("annotations"), f"{key!r} is reserved")
    immutable = m.flag("immutable") or False
    m.done()
    if not name or not namespace:
        return None
    return Target(
        name=name,
        namespace=namespace,
        type=type_,
        scope=scope,
        labels=labels,
        annotations=annotations,
        immutable=immutable,
    )


def _fleet_secret(ctx: _Ctx, header: _Header) -> FleetSecret | None:
    spec = header.spec
    if not header.name or len(header.name) > 63 or selectors.label_value_problem(header.name):
        ctx.error(header.name_node, "metadata.name", "must be a valid label value (at most 63)")
    if spec is None:
        return None
    if "clusterSelector" not in spec.entries:
        ctx.error(spec.key or spec.node, "spec.clusterSelector", "required field is missing")
    selector = _selector(spec.map("clusterSelector"))
    selector_key = spec.key_node("clusterSelector")
    selector_origin = Origin(
        ctx.file, selector_key.start_mark.line + 1 if selector_key is not None else spec.line
    )
    target_map = spec.map("target", required=True)
    target_line = target_map.line if target_map else header.origin.line
    target = _target(ctx, target_map)
    data = _data(spec, "data", required=True)
    overlays: list[Overlay] = []
    for item, path in spec.seq("overlays") or []:
        om = _as_map(ctx, item, path)
        if om is None:
            continue
        has_sel = "clusterSelector" in om.entries
        has_list = "clusters" in om.entries
        if has_sel == has_list:
            ctx.error(item, path, "an overlay needs exactly one of clusterSelector or clusters")
        osel = _selector(om.map("clusterSelector")) if has_sel else None
        names = om.str_list("clusters") if has_list else None
        odata = _data(om, "data", required=True)
        om.done()
        overlays.append(
            Overlay(
                origin=Origin(ctx.file, om.line),
                data=odata,
                selector=osel,
                clusters=tuple(n for n, _ in names) if names is not None else None,
            )
        )
    restarts: list[RestartRef] = []
    rollout = spec.map("rollout")
    if rollout is not None:
        for item, path in rollout.seq("restart") or []:
            rm = _as_map(ctx, item, path)
            if rm is None:
                continue
            kind = rm.text("kind", required=True) or ""
            if kind and kind not in ("Deployment", "StatefulSet", "DaemonSet"):
                ctx.error(
                    rm.key_node("kind"),
                    f"{path}.kind",
                    "must be Deployment, StatefulSet or DaemonSet",
                )
            name = rm.text("name", required=True) or ""
            rm.done()
            restarts.append(RestartRef(kind=kind, name=name))
        rollout.done()
    refresh = spec.text("refreshInterval") or "1h0m0s"
    if not _DURATION.fullmatch(refresh):
        ctx.error(
            spec.key_node("refreshInterval"),
            "spec.refreshInterval",
            "must be a duration such as 1h, 30m or 1h0m0s",
        )
    adopt = spec.flag("adopt") or False
    allow_no_clusters = spec.flag("allowNoClusters") or False
    spec.done()
    if target is None:
        return None
    return FleetSecret(
        name=header.name,
        origin=header.origin,
        selector=selector,
        target=target,
        target_origin=Origin(ctx.file, target_line),
        data=data,
        overlays=tuple(overlays),
        restarts=tuple(restarts),
        refresh_interval=refresh,
        adopt=adopt,
        allow_no_clusters=allow_no_clusters,
        selector_origin=selector_origin,
    )


def _documents(root: Path, rel: str, ctx: _Ctx) -> list[_Header]:
    ctx.file = rel
    ctx.nodes = 0
    try:
        nodes = _compose(read_fleet_file(root, rel), file=rel)
        return [h for node in nodes if (h := _header(ctx, node)) is not None]
    except errors.ConfigError as exc:
        ctx.errors.append(exc)
        return []


def _register[T: (Cluster, FleetSecret)](
    ctx: _Ctx, table: dict[str, T], item: T | None, what: str, header: _Header
) -> None:
    """Add a loaded Cluster or FleetSecret, refusing a second one of the same name."""
    if item is None:
        return
    if (first := table.get(item.name)) is not None:
        ctx.errors.append(
            errors.ConfigError(
                f"{what} {item.name!r} is also defined at {first.origin}",
                file=header.origin.file,
                line=header.origin.line,
                field="metadata.name",
            )
        )
        return
    table[item.name] = item


def _empty_selections(
    secrets: Iterable[FleetSecret], clusters: Iterable[Cluster]
) -> list[errors.ConfigError]:
    """A selector that picks no cluster is almost always a typo (`env: prd`), and rendering it
    would prune the secret from every cluster it used to reach: an error unless the
    FleetSecret says `allowNoClusters: true`. An overlay that reaches none of its FleetSecret's
    clusters changes nothing, and is refused for the same reason."""
    every = list(clusters)
    problems: list[errors.ConfigError] = []
    for secret in secrets:
        if secret.allow_no_clusters:
            continue
        chosen = [c for c in every if selectors.matches(secret.selector, c.labels)]
        if not chosen:
            problems.append(
                errors.ConfigError(
                    f"selects no cluster of the fleet's {len(every)} (set "
                    "allowNoClusters: true if that is deliberate)",
                    file=(secret.selector_origin or secret.origin).file,
                    line=(secret.selector_origin or secret.origin).line,
                    field="spec.clusterSelector",
                )
            )
            continue
        for overlay in secret.overlays:
            if not any(selectors.overlay_reaches(overlay, c) for c in chosen):
                field = "spec.overlays." + (
                    "clusterSelector" if overlay.clusters is None else "clusters"
                )
                problems.append(
                    errors.ConfigError(
                        f"the overlay selects none of the {len(chosen)} cluster(s) this "
                        "FleetSecret selects",
                        file=overlay.origin.file,
                        line=overlay.origin.line,
                        field=field,
                    )
                )
    return problems


def _fleet_document(ctx: _Ctx, root: Path) -> Fleet:
    """The Fleet of secretsync.yaml, without clusters and secrets; raises when there is none."""
    headers = _documents(root, FLEET_FILE, ctx)
    fleets = [h for h in headers if h.kind == "Fleet"]
    for h in headers:
        if h.kind != "Fleet":
            ctx.error(None, "kind", f"{FLEET_FILE} holds the Fleet only")
    if not fleets and not ctx.errors:
        ctx.errors.append(errors.ConfigError("no kind: Fleet document", file=FLEET_FILE))
    if len(fleets) > 1:
        ctx.errors.append(
            errors.ConfigError("more than one Fleet", file=FLEET_FILE, line=fleets[1].origin.line)
        )
    if not fleets:
        raise errors.ConfigErrors(ctx.errors)
    ctx.file = FLEET_FILE
    return _fleet(ctx, fleets[0], root)


def load_fleet_settings(root: Path) -> Fleet:
    """Only secretsync.yaml (defaults, sources, policies), for commands that need the Fleet's
    settings but not its clusters and secrets (`scan`). Raises `errors.ConfigErrors`."""
    ctx = _Ctx(root=Path(root))
    fleet = _fleet_document(ctx, Path(root))
    if ctx.errors:
        raise errors.ConfigErrors(ctx.errors)
    return fleet


def load_fleet(root: Path) -> Fleet:
    """Load and check a fleet repo. Raises `errors.ConfigErrors` listing every problem."""
    root = Path(root)
    if not root.is_dir():
        raise errors.ConfigErrors(
            [errors.ConfigError("fleet repo folder not found", file=str(root))]
        )
    ctx = _Ctx(root=root)
    fleet = _fleet_document(ctx, root)

    clusters: dict[str, Cluster] = {}
    secrets: dict[str, FleetSecret] = {}
    files: list[str] = []
    seen: set[str] = set()
    for folder in (fleet.layout.clusters, fleet.layout.secrets):
        try:
            for rel in _yaml_files(root, folder):
                if rel not in seen:
                    seen.add(rel)
                    files.append(rel)
        except errors.ConfigError as exc:
            ctx.errors.append(exc)
    for rel in files:
        for header in _documents(root, rel, ctx):
            if header.kind == "Fleet":
                ctx.errors.append(
                    errors.ConfigError(
                        f"a Fleet belongs in {FLEET_FILE}",
                        file=rel,
                        line=header.origin.line,
                        field="kind",
                    )
                )
            elif header.kind == "Cluster":
                _register(ctx, clusters, _cluster(ctx, header, fleet), "cluster", header)
            elif header.kind == "FleetSecret":
                _register(ctx, secrets, _fleet_secret(ctx, header), "FleetSecret", header)
    for secret in secrets.values():
        for overlay in secret.overlays:
            for name in overlay.clusters or ():
                if name not in clusters:
                    ctx.errors.append(
                        errors.ConfigError(
                            f"overlay names unknown cluster {name!r}",
                            file=overlay.origin.file,
                            line=overlay.origin.line,
                            field="spec.overlays.clusters",
                        )
                    )
    if not ctx.errors:
        ctx.errors.extend(_empty_selections(secrets.values(), clusters.values()))
    if ctx.errors:
        raise errors.ConfigErrors(ctx.errors)
    return Fleet(
        name=fleet.name,
        root=fleet.root,
        origin=fleet.origin,
        default_delivery=fleet.default_delivery,
        output_dir=fleet.output_dir,
        layout=fleet.layout,
        vault=fleet.vault,
        sops=fleet.sops,
        policies=fleet.policies,
        clusters=dict(sorted(clusters.items())),
        secrets=dict(sorted(secrets.items())),
    )
