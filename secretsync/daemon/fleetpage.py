"""The fleet page: a server-rendered cluster x FleetSecret grid with its banners (fleet repo
errors, held deletes, unreachable shards, expiring sealing certificates), the last cycle and
push, and the problems; a little inline JavaScript filters it by cluster label, state and
secret name. Pure: the board in, HTML out. Every dynamic string is escaped; the style and the
script carry the request's CSP nonce.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from secretsync.daemon.status import State, StatusBoard

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1f2328}
h1{font-size:1.3rem;margin:0 0 .5rem}
.meta{color:#57606a;margin:.2rem 0}
.banner{background:#ffebe9;border:1px solid #cf222e;padding:.5rem .8rem;margin:.8rem 0;
white-space:pre-wrap}
.filters{margin:1rem 0;display:flex;gap:1rem;flex-wrap:wrap;align-items:center}
table{border-collapse:collapse}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;vertical-align:top}
th.secret{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap}
td.cell{font-weight:600;min-width:5.5rem}
.st-synced{background:#dafbe1;color:#116329}
.st-drifted{background:#fff8c5;color:#7d4e00}
.st-failed{background:#ffebe9;color:#a40e26}
.st-pending{background:#ddf4ff;color:#0a3069}
.st-undelivered{background:#f6f8fa;color:#57606a}
.none{color:#8c959f}
.dim{opacity:.25}
.hidden{display:none}
.labels{color:#57606a;font-size:12px}
.shard{color:#57606a;font-size:12px;font-weight:400}
.shard.unreachable{color:#a40e26}
time[title]{text-decoration:underline dotted #8c959f}
code{font-size:12px}
"""

_SCRIPT = """
(function () {
  var label = document.getElementById('f-label');
  var state = document.getElementById('f-state');
  var name = document.getElementById('f-secret');
  var shown = document.getElementById('shown');
  function apply() {
    var want = label.value, st = state.value, text = name.value.trim().toLowerCase();
    var cols = {};
    document.querySelectorAll('th.secret').forEach(function (th) {
      var ok = !text || th.dataset.secret.toLowerCase().indexOf(text) >= 0;
      cols[th.dataset.secret] = ok;
      th.classList.toggle('hidden', !ok);
    });
    var count = 0;
    document.querySelectorAll('tr.cluster').forEach(function (tr) {
      var labelled = !want || (' ' + tr.dataset.labels + ' ').indexOf(' ' + want + ' ') >= 0;
      var matches = 0;
      tr.querySelectorAll('td.cell, td.none').forEach(function (td) {
        var colOk = cols[td.dataset.secret];
        td.classList.toggle('hidden', !colOk);
        var hit = colOk && td.classList.contains('cell') && (!st || td.dataset.state === st);
        td.classList.toggle('dim', !!st && !hit);
        if (hit) { matches += 1; }
      });
      var visible = labelled && (matches > 0 || (!st && !text));
      tr.classList.toggle('hidden', !visible);
      if (visible) { count += matches; }
    });
    shown.textContent = count + ' object(s) shown';
  }
  [label, state].forEach(function (el) { el.addEventListener('change', apply); });
  name.addEventListener('input', apply);
  apply();
})();
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _clock_text(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(at: datetime, now: datetime) -> str:
    seconds = int((now - at).total_seconds())
    if seconds < 0:
        return "in the future (clock skew)"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _time(at: datetime, now: datetime) -> str:
    """A time as people read it (`2026-12-06 17:14:15 UTC`), its age on hover."""
    return (
        f'<time datetime="{_e(at.isoformat(timespec="seconds"))}" title="{_e(_age(at, now))}">'
        f"{_e(_clock_text(at))}</time>"
    )


def _parse_time(text: object) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) else None


def _source_note(source: dict[str, Any] | None, now: datetime) -> str:
    """Under a cluster's name across shards: its shard, the replica its states come from and
    when they were fetched (or that they could not be)."""
    if not source:
        return ""
    at = _parse_time(source["fetchedAt"])
    text = f"shard {_e(source['shard'])}"
    if source["replica"]:
        text += f" · {_e(source['replica'])}"
    if not source["reachable"]:
        fetched = f", states of {_time(at, now)}" if at else ", states unknown"
        return f"<div class='shard unreachable'>{text} · unreachable{fetched}</div>"
    if source["peer"] and at:
        text += f" · fetched {_time(at, now)}"
    return f"<div class=shard>{text}</div>"


def render_page(board: StatusBoard, *, nonce: str, now: datetime | None = None) -> str:
    """The fleet page: a cluster x FleetSecret grid. Every dynamic string is escaped."""
    now = now or datetime.now(UTC)
    out: list[str] = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width, initial-scale=1">',
        f"<title>secretsync — {_e(board.fleet_name or 'no fleet')}</title>",
        f'<style nonce="{_e(nonce)}">{_STYLE}</style></head><body>',
        f"<h1>Fleet <span id=fleet-name>{_e(board.fleet_name or '(not loaded)')}</span></h1>",
    ]
    out.extend(_banners(board, now))
    out.extend(_cycles(board, now))
    out.extend(_filters(board))
    out.extend(_grid(board, now))
    out.extend(_problems(board))
    out.append(f'<script nonce="{_e(nonce)}">{_SCRIPT}</script></body></html>')
    return "".join(out)


def _banners(board: StatusBoard, now: datetime) -> list[str]:
    """When the fleet loaded, and what needs an operator: a refused fleet repo, held deletes,
    shards whose states could not be fetched."""
    out: list[str] = []
    if board.fleet_loaded_at:
        at_commit = f" at commit {_e(board.commit)}" if board.commit else ""
        out.append(
            f"<p class=meta>Fleet repo loaded {_time(board.fleet_loaded_at, now)}{at_commit}</p>"
        )
    if board.fleet_error:
        out.append(
            f"<div class=banner id=fleet-error><strong>The fleet repo does not load "
            f"({_time(board.fleet_error_at, now) if board.fleet_error_at else ''}); "
            f"the last good one keeps running:</strong>\n{_e(board.fleet_error)}</div>"
        )
    for name, held in board.held.items():
        out.append(
            f"<div class=banner id=held-{_e(name)}><strong>{_e(len(held.objects))} deletes "
            f"held on {_e(name)}: over the delete limit.</strong> Nothing is deleted there "
            "until the fleet changes or an operator runs <code>sync --allow-deletes</code> / "
            f"<code>render --allow-deletes</code>: {_e(', '.join(held.objects))}</div>"
        )
    for replica in board.replicas or ():
        if replica["error"] is None:
            continue
        shard = replica["shard"]
        at = _parse_time(replica["fetchedAt"])
        shown = (
            f"its clusters show the states fetched {_time(at, now)}"
            if replica["merged"] and at
            else "not merged"
            if replica["fetchedAt"]
            else "its clusters show the planned objects only"
        )
        who = replica["peer"] or replica["identity"] or "no replica"
        out.append(
            f"<div class=banner id=replica-{_e(shard if shard is not None else 'unknown')}>"
            f"<strong>Shard {_e(shard if shard is not None else '?')} ({_e(who)})</strong>: "
            f"{_e(replica['error'])}; {shown}</div>"
        )
    return out


def _cycles(board: StatusBoard, now: datetime) -> list[str]:
    """The totals, the last cycle, expiring sealing certificates and the last push."""
    out: list[str] = []
    totals = board.totals()
    out.append(
        "<p class=meta id=totals>"
        + ", ".join(f"{_e(n)} {_e(s)}" for s, n in totals.items())
        + f" — {_e(board.cycles)} cycle(s)</p>"
    )
    cycle = board.last_cycle
    if cycle is not None:
        counts = ", ".join(f"{_e(n)} {_e(k)}" for k, n in cycle.counts.items() if n)
        out.append(
            f"<p class=meta id=last-cycle>Last cycle ({_e(cycle.trigger)}): started "
            f"{_time(cycle.started, now)}, took {cycle.duration_s:.2f} s, "
            f"outcome <strong>{_e(cycle.outcome)}</strong>"
            + (f"; {counts}" if counts else "")
            + (f"; error: {_e(cycle.error)}" if cycle.error else "")
            + "</p>"
        )
    expiring = {c: v["warning"] for c, v in board.certificates.items() if v["warning"]}
    if expiring:
        out.append("<div class=banner id=certificates><strong>Sealing certificates:</strong><ul>")
        out.extend(f"<li>{_e(c)}: {_e(w)}</li>" for c, w in expiring.items())
        out.append("</ul></div>")
    push = board.last_push
    if push is not None:  # serve --git-push
        out.append(
            f"<p class=meta id=last-push>Last push: <strong>{_e(push['result'])}</strong> at "
            f"{_e(push['at'])}"
            + (f", commit {_e(push['commit'])}" if push.get("commit") else "")
            + f", {_e(push['objects'])} object(s), {_e(push['tries'])} tr(ies)"
            + (f"; {_e(push['reason'])}" if push.get("reason") else "")
            + "</p>"
        )
    return out


def _filters(board: StatusBoard) -> list[str]:
    """The filters of the grid: cluster label, state, secret name."""
    label_pairs = sorted({f"{k}={v}" for c in board.clusters.values() for k, v in c.labels.items()})
    out: list[str] = []
    out.append('<div class=filters><label>Cluster label <select id=f-label><option value="">any')
    out.extend(f'<option value="{_e(p)}">{_e(p)}' for p in label_pairs)
    out.append('</select></label><label>State <select id=f-state><option value="">any')
    out.extend(f"<option value={s.value}>{s.value}" for s in State)
    out.append(
        "</select></label><label>Secret <input id=f-secret type=search "
        'placeholder="name contains"></label><span id=shown></span></div>'
    )
    return out


def _grid(board: StatusBoard, now: datetime) -> list[str]:
    """A row per cluster, a column per FleetSecret in use; each cell's state, its tooltip the
    object, the reason and the last sync."""
    secrets_in_use = sorted({e.fleet_secret for e in board.entries.values()})
    out: list[str] = []
    out.append("<table id=grid><thead><tr><th>cluster</th><th>delivery</th>")
    out.extend(
        f'<th class=secret data-secret="{_e(name)}">{_e(name)}</th>' for name in secrets_in_use
    )
    out.append("</tr></thead><tbody>")
    for cluster in board.clusters.values():
        labels = " ".join(f"{k}={v}" for k, v in sorted(cluster.labels.items()))
        out.append(
            f'<tr class=cluster data-cluster="{_e(cluster.name)}" data-labels="{_e(labels)}">'
            f"<th>{_e(cluster.name)}<div class=labels>{_e(labels)}</div>"
            f"{_source_note(board.cluster_sources.get(cluster.name), now)}</th>"
            f"<td>{_e(cluster.delivery)}"
            + "".join(f"<div class=labels>{_e(r)}</div>" for r in cluster.readers)
            + "</td>"
        )
        for name in secrets_in_use:
            entry = board.entries.get((cluster.name, name))
            if entry is None:
                out.append(f'<td class=none data-secret="{_e(name)}">—</td>')
                continue
            tip = f"{entry.namespace}/{entry.name}"
            if entry.reason:
                tip += f": {entry.reason}"
            if entry.last_sync:
                at = entry.last_sync
                tip += f" (last sync {_clock_text(at)}, {_age(at, now)})"
            out.append(
                f'<td class="cell st-{entry.state.value}" data-secret="{_e(name)}" '
                f'data-state="{entry.state.value}" title="{_e(tip)}">{entry.state.value}</td>'
            )
        out.append("</tr>")
    out.append("</tbody></table>")
    return out


def _problems(board: StatusBoard) -> list[str]:
    """Failed clusters of the last cycle, then failed and drifted objects."""
    cycle = board.last_cycle
    out: list[str] = []
    problems = [e for e in board.sorted_entries() if e.state in (State.FAILED, State.DRIFTED)]
    failed_clusters = cycle.failed_clusters if cycle else {}
    if problems or failed_clusters:
        out.append("<h2>Problems</h2><ul id=problems>")
        out.extend(
            f"<li><strong>cluster {_e(name)}</strong>: {_e(reason)}</li>"
            for name, reason in failed_clusters.items()
        )
        out.extend(
            f"<li class=st-{e.state.value}><strong>{_e(e.state.value)}</strong> "
            f"{_e(e.cluster)} / {_e(e.fleet_secret)} (<code>{_e(e.namespace)}/{_e(e.name)}"
            f"</code>): {_e(e.reason)}</li>"
            for e in problems
        )
        out.append("</ul>")
    return out
