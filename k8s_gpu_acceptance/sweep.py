"""The fleet sweep's rules: which GPU nodes to probe, how many probe pods at once, one verdict per node.

One probe pod proves one node; what breaks in a fleet is one node. So with --all-nodes (or a node label
selector) the suite runs one probe pod per GPU node, each pinned by the scheduler through
`nodeSelector kubernetes.io/hostname=<node>` (never `nodeName`, which would bypass the scheduler's GPU
accounting and the scheduling layer's whole point), at most --max-parallel at a time. The cluster-wide
layers (cluster, device_plugin) run once; scheduling and the probe layers once per node.

Everything here is pure (nodes and outcomes in, decisions and report shapes out) so that it is unit-tested
without a cluster; the pod lifecycle and the wait are the suite's own.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from k8s_gpu_acceptance.cluster import NodeFacts
from k8s_gpu_acceptance.diagnosis import untolerated_taints

HOSTNAME_LABEL = "kubernetes.io/hostname"
VERDICT_LABEL = "k8s-gpu-acceptance/verdict"
LAST_RUN_ANNOTATION = "k8s-gpu-acceptance/last-run"

NodeStatus = Literal["failed", "no-result", "not-probed", "passed"]
STATUS_ORDER: dict[str, int] = {"failed": 0, "no-result": 1, "not-probed": 2, "passed": 3}
NODE_LAYERS = ("scheduling", "driver", "nvidia_smi", "torch_cuda", "gpt2", "gpu_perf")


# --- selection ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A node to probe, and the nodeSelector that pins the probe pod there through the scheduler."""

    node: str
    hostname: str
    allocatable: int
    free: int

    def node_selector(self, base: Mapping[str, str]) -> dict[str, str]:
        return {**base, HOSTNAME_LABEL: self.hostname}


@dataclass(frozen=True)
class Skipped:
    """A GPU node without a probe pod: `status` says whether that is the user's choice or a broken node."""

    node: str
    status: NodeStatus  # "not-probed" (excluded by the options) or "no-result" (cannot run a pod)
    reason: str


def natural_key(name: str) -> tuple[Any, ...]:
    """gpu-node-2 before gpu-node-10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def select_nodes(
    nodes: Iterable[NodeFacts],
    *,
    node_selector: Mapping[str, str],
    tolerations: Sequence[dict[str, str]],
    gpus: int,
    used_gpus: Mapping[str, int],
    idle_only: bool = False,
) -> tuple[list[Target], list[Skipped]]:
    """Every GPU node (nvidia.com/gpu capacity or GFD's gpu.present label) becomes a Target or a Skipped.

    Not probed on purpose (the options exclude it): a label outside --node-selector, a NoSchedule or
    NoExecute taint no --toleration tolerates, cordoned, or busy with --idle-only. No result (a broken
    node, counted as a failure): NotReady, no allocatable nvidia.com/gpu, fewer allocatable than --gpus,
    no hostname label to pin a pod with.
    """
    targets: list[Target] = []
    skipped: list[Skipped] = []
    for node in sorted(nodes, key=lambda n: natural_key(n.name)):
        if not (node.gpu_capacity > 0 or node.labels.get("nvidia.com/gpu.present") == "true"):
            continue
        mismatch = {k: v for k, v in node_selector.items() if node.labels.get(k) != v}
        taints = untolerated_taints([(node.name, node.labels, node.taints)], {}, list(tolerations))
        used = used_gpus.get(node.name, 0)
        free = node.gpu_allocatable - used
        hostname = node.labels.get(HOSTNAME_LABEL)
        if mismatch:
            wanted = ", ".join(f"{k}={v}" for k, v in mismatch.items())
            skipped.append(Skipped(node.name, "not-probed", f"labels do not match --node-selector {wanted}"))
        elif taints:
            tols = ", ".join(f"--toleration={_toleration(t)}" for t in taints)
            skipped.append(
                Skipped(
                    node.name, "not-probed", f"untolerated taint {'; '.join(taints)} (to include it: {tols})"
                )
            )
        elif node.unschedulable:
            skipped.append(Skipped(node.name, "not-probed", "cordoned (spec.unschedulable)"))
        elif not node.ready:
            skipped.append(Skipped(node.name, "no-result", "node is NotReady: no pod can start there"))
        elif node.gpu_allocatable < gpus:
            skipped.append(
                Skipped(
                    node.name,
                    "no-result",
                    f"allocatable nvidia.com/gpu is {node.gpu_allocatable} (capacity {node.gpu_capacity}), "
                    f"--gpus={gpus} needed: the device plugin does not serve this node's GPUs",
                )
            )
        elif not hostname:
            skipped.append(
                Skipped(
                    node.name, "no-result", f"no {HOSTNAME_LABEL} label to pin the probe pod by nodeSelector"
                )
            )
        elif idle_only and free < gpus:
            skipped.append(
                Skipped(
                    node.name,
                    "not-probed",
                    f"busy: {max(free, 0)} of {node.gpu_allocatable} nvidia.com/gpu free, --gpus={gpus} "
                    "needed (--idle-only)",
                )
            )
        else:
            targets.append(Target(node.name, hostname, node.gpu_allocatable, free))
    return targets, skipped


def _toleration(taint: str) -> str:
    key, _, value = taint.partition(":")
    value = value.strip()
    return f"{key.strip()}={value}:NoSchedule" if value else f"{key.strip()}:NoSchedule"


# --- bounded concurrency -----------------------------------------------------------------------------


@dataclass
class Queue:
    """At most `max_parallel` probe pods in flight; each finished one makes room for the next node."""

    pending: list[str]
    max_parallel: int
    in_flight: set[str] = field(default_factory=set)
    finished: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, got {self.max_parallel}")
        self.pending = list(self.pending)

    def to_start(self) -> list[str]:
        """The nodes to start now (they count as in flight from here on)."""
        room = self.max_parallel - len(self.in_flight)
        batch, self.pending = self.pending[:room], self.pending[room:]
        self.in_flight.update(batch)
        return batch

    def finish(self, node: str) -> None:
        self.in_flight.discard(node)
        self.finished.append(node)

    @property
    def done(self) -> bool:
        return not self.pending and not self.in_flight


def drive(
    queue: Queue,
    start: Callable[[str], None],
    wait_some: Callable[[frozenset[str]], Iterable[str]],
) -> list[str]:
    """Start nodes up to the bound; `wait_some(in_flight)` returns the nodes whose pods are decided (it owns
    the per-pod deadlines, so it always returns some). Returns the nodes in the order they finished."""
    while not queue.done:
        for node in queue.to_start():
            start(node)
        decided = [n for n in wait_some(frozenset(queue.in_flight)) if n in queue.in_flight]
        if not decided:
            raise RuntimeError(f"the wait returned without deciding any of {len(queue.in_flight)} probe pods")
        for node in decided:
            queue.finish(node)
    return queue.finished


# --- one verdict per node ----------------------------------------------------------------------------


@dataclass
class NodeRow:
    """One line of the per-node table: status, why, each layer's outcome, key figures."""

    node: str
    status: NodeStatus
    reason: str = ""
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.node,
            "status": self.status,
            "reason": self.reason,
            "layers": [{"name": name, **cell} for name, cell in self.layers.items()],
            "figures": self.figures,
        }


def node_status(outcomes: Mapping[str, str]) -> NodeStatus:
    """passed when every layer that ran passed; no-result when its pod never ran (scheduling did not pass
    or everything was blocked); failed when a probe layer failed or errored on the node."""
    if not outcomes:
        return "no-result"
    if outcomes.get("scheduling") in ("failed", "error", "blocked"):
        return "no-result"
    probe = {k: v for k, v in outcomes.items() if k != "scheduling"}
    if any(v in ("failed", "error") for v in probe.values()):
        return "failed"
    if probe and all(v == "blocked" for v in probe.values()):
        return "no-result"
    return "passed"


def first_problem(cells: Mapping[str, Mapping[str, Any]]) -> str:
    """The root cause on this node: the first failed layer's diagnosis (or message), in layer order."""
    for name in NODE_LAYERS:
        cell = cells.get(name) or {}
        if cell.get("outcome") in ("failed", "error"):
            diagnosis = cell.get("diagnosis") or {}
            text = diagnosis.get("seen") or cell.get("message") or cell.get("outcome")
            return f"{name}: {text}"
    for cell in cells.values():
        if cell.get("outcome") == "blocked":
            return str(cell.get("message") or "blocked")
    return ""


def key_figures(document: Mapping[str, Any] | None) -> dict[str, Any]:
    """The handful of numbers worth a column: GPU, driver, TFLOP/s, bandwidth, GPT-2 latency."""
    if not document:
        return {}
    layers = document.get("layers") or {}

    def metric(layer: str, key: str) -> Any:
        entry = layers.get(layer)
        return ((entry.get("metrics") or {}) if isinstance(entry, dict) else {}).get(key)

    gpus = metric("driver", "gpus") or []
    per_gpu = [g for g in metric("gpu_perf", "per_gpu") or [] if isinstance(g, dict)]

    def slowest(key: str) -> Any:
        """A multi-GPU pod's node figure is its slowest GPU's: one slow GPU is what a node row must show."""
        values = [g[key] for g in per_gpu if isinstance(g.get(key), (int, float))]
        return min(values) if values else metric("gpu_perf", key)

    figures = {
        "gpu": ", ".join(sorted({str(g.get("name")) for g in gpus if isinstance(g, dict)})) or None,
        "driver_version": metric("driver", "driver_version"),
        "bf16_tflops": slowest("bf16_tflops"),
        "tflops_ratio": slowest("tflops_ratio"),
        "memory_bandwidth_gbps": slowest("memory_bandwidth_gbps"),
        "per_gpu": "; ".join(
            f"cuda:{g.get('index')} {g.get('bf16_tflops')} TFLOP/s, {g.get('memory_bandwidth_gbps')} GB/s"
            for g in per_gpu
        )
        or None,
        "token_latency_ms_p95": metric("gpt2", "token_latency_ms_p95"),
        "probe_duration_s": document.get("duration_s"),
    }
    return {k: v for k, v in figures.items() if v is not None}


def build_rows(
    outcomes: Mapping[str, Mapping[str, Mapping[str, Any]]],
    skipped: Iterable[Skipped],
    documents: Mapping[str, Mapping[str, Any] | None],
    probed: Iterable[str] = (),
) -> list[NodeRow]:
    """One row per GPU node, failures first: every probed node (even one no test reported on, which is
    then 'no-result') and every skipped one with its reason. Never drops a node."""
    rows: list[NodeRow] = []
    for node in dict.fromkeys([*probed, *outcomes]):
        cells = {name: dict(outcomes.get(node, {}).get(name, {})) for name in NODE_LAYERS}
        cells = {k: v for k, v in cells.items() if v}
        status = node_status({k: str(v.get("outcome")) for k, v in cells.items()})
        reason = first_problem(cells) if status != "passed" else ""
        if not cells:
            reason = "no test reported on this node (interrupted, or deselected with -k/-m)"
        rows.append(NodeRow(node, status, reason, cells, key_figures(documents.get(node))))
    rows += [NodeRow(s.node, s.status, s.reason) for s in skipped]
    return sort_rows(rows)


def sort_rows(rows: Iterable[NodeRow]) -> list[NodeRow]:
    return sorted(rows, key=lambda r: (STATUS_ORDER[r.status], natural_key(r.node)))


def summary(rows: Iterable[NodeRow]) -> dict[str, int]:
    counts = dict.fromkeys(STATUS_ORDER, 0)
    for row in rows:
        counts[row.status] += 1
    return counts


# --- writing the result back to the nodes (--label-nodes) ---------------------------------------------


def node_patch(row: NodeRow, run_id: str, now: dt.datetime) -> dict[str, Any]:
    """A merge patch: the verdict as a label (schedulers and dashboards select on it), the details as an
    annotation. Only for nodes that were probed: a node the options excluded keeps its last verdict."""
    failed = [c["name"] for c in row.as_dict()["layers"] if c.get("outcome") in ("failed", "error")]
    detail = {
        "run_id": run_id,
        "at": now.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "status": row.status,
        "failed_layers": failed,
        "reason": row.reason[:500],
    }
    return {
        "metadata": {
            "labels": {VERDICT_LABEL: row.status},
            "annotations": {LAST_RUN_ANNOTATION: json.dumps(detail, sort_keys=True)},
        }
    }


# --- the report's table ------------------------------------------------------------------------------

_SORT_JS = (
    "<script>function gaSort(th){var t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),"
    "b=t.tBodies[0],d=th.dataset.dir==='a'?'d':'a';th.dataset.dir=d;var r=[...b.rows].sort(function(x,y){"
    "var p=x.cells[i].dataset.k||x.cells[i].textContent,q=y.cells[i].dataset.k||y.cells[i].textContent,"
    "m=parseFloat(p),n=parseFloat(q),c=(!isNaN(m)&&!isNaN(n))?m-n:p.localeCompare(q,undefined,{numeric:true});"
    "return d==='a'?c:-c});r.forEach(function(e){b.appendChild(e)})}</script>"
)
_FIGURE_COLUMNS = (
    ("gpu", "GPU"),
    ("driver_version", "driver"),
    ("bf16_tflops", "bf16 TFLOP/s"),
    ("memory_bandwidth_gbps", "GB/s"),
    ("token_latency_ms_p95", "GPT-2 p95 ms"),
    ("per_gpu", "each GPU (multi-GPU pods)"),
)


def rows_html(rows: Sequence[NodeRow]) -> str:
    """A self-contained table, failures first; click a header to sort by it (numbers as numbers)."""
    counts = ", ".join(f"{n} {status}" for status, n in summary(rows).items() if n)
    head = ["node", "status", *NODE_LAYERS, *(title for _, title in _FIGURE_COLUMNS), "reason"]
    out = [
        f"<h2>Nodes ({len(rows)}: {html.escape(counts)})</h2>",
        _SORT_JS,
        '<table id="gpu-acceptance-nodes" class="gpu-acceptance-nodes"><thead><tr>',
        *(f'<th onclick="gaSort(this)" style="cursor:pointer">{html.escape(h)}</th>' for h in head),
        "</tr></thead><tbody>",
    ]
    for row in rows:
        cells = [
            f"<td>{html.escape(row.node)}</td>",
            f'<td data-k="{STATUS_ORDER[row.status]}" class="{row.status}"><b>{row.status}</b></td>',
        ]
        for name in NODE_LAYERS:
            outcome = str((row.layers.get(name) or {}).get("outcome", "-"))
            cells.append(f'<td class="{html.escape(outcome)}">{html.escape(outcome)}</td>')
        for key, _title in _FIGURE_COLUMNS:
            value = row.figures.get(key)
            cells.append(f"<td>{html.escape('' if value is None else str(value))}</td>")
        cells.append(f"<td>{html.escape(row.reason)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)
