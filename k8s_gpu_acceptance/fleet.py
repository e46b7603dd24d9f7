"""The fleet sweep on a cluster: plan it (which nodes), run it (one probe pod per node, bounded), write back.

Owns the API side of the sweep; the rules are in `sweep.py` (pure), the pod lifecycle and the one wait are
the suite's own (`pods.PodSession`, `wait.wait_for`). One session (one namespace, one probe ConfigMap)
holds every node's pod; one list-then-watch over that namespace decides them all. Its condition starts the
next node's pod as soon as one is decided, so at most --max-parallel pods exist at any time and nothing
waits for a whole wave. Creating pods and reading logs go to a few worker threads (they are network round
trips, and the watch must keep reading meanwhile).
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from k8s_gpu_acceptance import sweep
from k8s_gpu_acceptance.cluster import REQUEST_TIMEOUT, Connection, api_json, api_message, node_facts
from k8s_gpu_acceptance.pods import (
    PodFailure,
    PodRun,
    PodSession,
    PodState,
    Progress,
    build_probe_pod,
    classify_pod,
    event_time,
)
from k8s_gpu_acceptance.run import run_selector
from k8s_gpu_acceptance.settings import Settings
from k8s_gpu_acceptance.wait import WINDOW_S, Source, wait_for

NODE_ANNOTATION = "k8s-gpu-acceptance/node"
API_WORKERS = 8  # creates and log reads in flight; the client's connection pool is sized to match
EVENTS_EVERY_S = WINDOW_S


@dataclass
class SweepPlan:
    """The nodes a sweep probes and those it does not (with the reason); `error` when listing failed."""

    targets: list[sweep.Target] = field(default_factory=list)
    skipped: list[sweep.Skipped] = field(default_factory=list)
    error: str | None = None
    took_s: float = 0.0

    @property
    def test_nodes(self) -> list[str]:
        """The nodes that get a testcase per layer: the probed ones and the broken ones (whose scheduling
        test fails with the reason); nodes the options exclude appear only in the report's table."""
        broken = [s.node for s in self.skipped if s.status == "no-result"]
        return sorted([t.node for t in self.targets] + broken, key=sweep.natural_key)


def plan(connection: Connection, settings: Settings) -> SweepPlan:
    """List the GPU nodes (the label selector is the API server's to evaluate) and choose."""
    from k8s_gpu_acceptance.sharing import used_gpus_by_node  # sharing imports the pods module, as we do

    started = time.monotonic()
    core = client.CoreV1Api(connection.api)
    try:
        nodes = (
            api_json(
                core.list_node,
                label_selector=settings.node_label_selector or "",
                _request_timeout=REQUEST_TIMEOUT,
            ).get("items")
            or []
        )
        used = used_gpus_by_node(core) if settings.idle_only else {}
    except ApiException as exc:
        return SweepPlan(error=f"listing the nodes failed: {exc.status} {api_message(exc)}")
    except Exception as exc:  # unreachable: the cluster layer says why, with the fix
        return SweepPlan(error=f"listing the nodes failed: {type(exc).__name__}")
    targets, skipped = sweep.select_nodes(
        [node_facts(n) for n in nodes],
        node_selector=settings.node_selector,
        tolerations=[t.to_k8s() for t in settings.tolerations],
        gpus=settings.gpus,
        used_gpus=used,
        idle_only=settings.idle_only,
    )
    return SweepPlan(targets, skipped, took_s=round(time.monotonic() - started, 2))


@dataclass
class SweepRun:
    """What the sweep measured: each probed node's pod (with its log), and where the time went."""

    plan: SweepPlan
    pods: dict[str, PodRun] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 2)


class _EventCache:
    """The namespace's events, grouped by pod, re-read at most every few seconds (one list call for all
    pods, instead of one per pod per check: at 1000 nodes that is the difference that matters)."""

    def __init__(self, session: PodSession) -> None:
        self.session = session
        self.by_pod: dict[str, list[dict[str, Any]]] = {}
        self.read_at = -math.inf

    def refresh(self) -> None:
        listed = api_json(
            self.session.core.list_namespaced_event, self.session.namespace, _request_timeout=REQUEST_TIMEOUT
        )
        grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in sorted(listed.get("items") or [], key=event_time):
            involved = event.get("involvedObject") or {}
            if involved.get("kind") == "Pod":
                grouped[str(involved.get("name"))].append(event)
        self.by_pod, self.read_at = dict(grouped), time.monotonic()

    def of(self, name: str, fresh: bool = False) -> list[dict[str, Any]]:
        if fresh or time.monotonic() - self.read_at >= EVENTS_EVERY_S:
            self.refresh()
        return self.by_pod.get(name, [])


def _needs_events(pod: dict[str, Any]) -> bool:
    """Only a pod that may be stuck needs its events to be judged: unschedulable (is an autoscaler adding a
    node?) or bound but not running (a sandbox the runtime could not create never changes the pod)."""
    status = pod.get("status") or {}
    if status.get("phase") != "Pending":
        return False
    return bool((pod.get("spec") or {}).get("nodeName")) or any(
        c.get("reason") == "Unschedulable" for c in status.get("conditions") or []
    )


def run(
    session: PodSession,
    sweep_plan: SweepPlan,
    settings: Settings,
    max_parallel: int,
    progress: Progress,
) -> SweepRun:
    """One probe pod per target node, at most `max_parallel` at once; never raises for a cluster-side
    failure (a pod that could not be created is that node's `rejected`/`api` failure)."""
    result = SweepRun(sweep_plan)
    targets = {t.node: t for t in sweep_plan.targets}
    if not targets:
        return result
    t0 = time.monotonic()
    session.open()
    result.timings["open_s"] = round(time.monotonic() - t0, 2)
    pod_of = {node: session.name(f"gpu-probe-{i}") for i, node in enumerate(targets, 1)}
    node_of = {pod: node for node, pod in pod_of.items()}
    template = build_probe_pod(
        settings, session.run_id, session.namespace, "template", session.configmap_name, session.items
    )
    queue = sweep.Queue(list(targets), max_parallel)
    started: dict[str, float] = {}
    decided_at: dict[str, float] = {}
    failures: dict[str, PodFailure] = {}
    create_s: list[float] = []
    lock = threading.Lock()
    events = _EventCache(session)
    done_count = [0]

    def manifest(node: str) -> dict[str, Any]:
        pod = copy.deepcopy(template)
        pod["metadata"]["name"] = pod_of[node]
        pod["metadata"]["annotations"] = {**pod["metadata"].get("annotations", {}), NODE_ANNOTATION: node}
        pod["spec"]["nodeSelector"] = targets[node].node_selector(settings.node_selector)
        return pod

    def create(node: str) -> None:
        began = time.monotonic()
        try:
            session.create_pod(manifest(node))
        except ApiException as exc:
            failure = PodFailure("rejected", f"{exc.status} {exc.reason}", api_message(exc))
            with lock:
                failures[pod_of[node]] = failure
        except Exception as exc:
            with lock:
                failures[pod_of[node]] = PodFailure("api", type(exc).__name__, str(exc)[:300])
        finally:
            with lock:
                create_s.append(time.monotonic() - began)

    pool = ThreadPoolExecutor(max_workers=API_WORKERS, thread_name_prefix="sweep")
    pending_creates: list[Future[None]] = []
    readers: dict[str, Future[PodRun]] = {}

    def read_log(name: str) -> PodRun:
        """The finished pod's log, read while the other pods still run (not after the last one)."""
        scratch = PodRun(namespace=session.namespace, name=name)
        scratch.log = session.read_logs(scratch).get("probe")
        return scratch

    def start_some() -> None:
        for node in queue.to_start():
            started[pod_of[node]] = time.monotonic()
            pending_creates.append(pool.submit(create, node))

    def condition(state: PodState) -> PodFailure | str | None:
        """The pod's verdict ("done" or a failure); deciding one starts the next node's pod."""
        name = state.name
        if name not in started:
            return None
        verdict: PodFailure | str | None
        with lock:
            verdict = failures.get(name)
        if verdict is None and state.deleted:
            verdict = PodFailure(
                "deleted", "Deleted", "the probe pod was deleted by someone else while it ran"
            )
        elif verdict is None and state.obj:
            seen = classify_pod(state.obj, events.of(name) if _needs_events(state.obj) else [])
            if seen.state == "done":
                verdict = "done"
            elif seen.state == "fail":
                verdict = seen.failure
        if verdict is None and time.monotonic() - started[name] > settings.pod_timeout:
            verdict = PodFailure(
                "timeout",
                "DeadlineExceeded",
                f"the probe pod did not finish within --pod-timeout={settings.pod_timeout}s",
            )
        if verdict is not None:
            decided_at[name] = time.monotonic()
            if verdict == "done" or (isinstance(verdict, PodFailure) and verdict.kind == "container"):
                readers[name] = pool.submit(read_log, name)
            queue.finish(node_of[name])
            done_count[0] += 1
            if done_count[0] % max(1, len(targets) // 10) == 0 or done_count[0] == len(targets):
                progress(f"sweep: {done_count[0]}/{len(targets)} nodes decided")
            start_some()
        return verdict

    t1 = time.monotonic()
    waves = math.ceil(len(targets) / max_parallel)
    try:
        start_some()
        waited = wait_for(
            Source(
                session.core.list_namespaced_pod,
                (session.namespace,),
                {"label_selector": run_selector(session.run_id)},
            ),
            list(node_of),
            condition,
            new=PodState,
            timeout_s=settings.pod_timeout * waves + 2 * WINDOW_S,
        )
        for future in pending_creates:
            future.result()
        result.timings["pods_s"] = round(time.monotonic() - t1, 2)
        t2 = time.monotonic()
        events.refresh()
        for name, node in node_of.items():
            pod = PodRun(namespace=session.namespace, name=name)
            verdict = waited.verdicts.get(name)
            state = waited.seen[name]
            if state.obj:
                session._record(pod, state.obj, events.of(name))
            pod.waited_s = round(decided_at.get(name, time.monotonic()) - started.get(name, t1), 2)
            if isinstance(verdict, PodFailure):
                pod.failure = verdict
            elif verdict is None:
                pod.failure = PodFailure("timeout", "DeadlineExceeded", "the sweep ended before this pod")
            if name in readers:
                scratch = readers[name].result()
                pod.log, pod.failure = scratch.log, pod.failure or scratch.failure
            pod.image = settings.image
            result.pods[node] = pod
        result.timings["logs_and_events_s"] = round(time.monotonic() - t2, 2)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    latencies = [decided_at[n] - started[n] for n in decided_at if n in started]
    result.timings.update(
        plan_s=sweep_plan.took_s,
        create_calls_s=round(sum(create_s), 2),
        pod_latency_p50_s=_percentile(latencies, 0.5),
        pod_latency_p95_s=_percentile(latencies, 0.95),
        pod_latency_max_s=_percentile(latencies, 1.0),
        relists=float(waited.relists),
    )
    return result


def node_pod(sweep_run: SweepRun, node: str) -> PodRun:
    """The node's probe pod; for a node the plan found unusable (NotReady, no allocatable GPU), a pod that
    never ran, with the reason, so its scheduling test fails and says why."""
    if node in sweep_run.pods:
        return sweep_run.pods[node]
    reason = next((s.reason for s in sweep_run.plan.skipped if s.node == node), "the sweep did not probe it")
    return PodRun(namespace="", name="", node_name=None, failure=PodFailure("node", node, reason))


def write_verdicts(
    connection: Connection, rows: list[sweep.NodeRow], run_id: str, now: dt.datetime | None = None
) -> list[str]:
    """--label-nodes: each probed node's verdict as a label, the details as an annotation; returns problems
    (a missing RBAC right must not fail the run's verdicts, it is reported)."""
    core = client.CoreV1Api(connection.api)
    moment = now or dt.datetime.now(dt.timezone.utc)
    problems: list[str] = []
    for row in rows:
        if row.status == "not-probed":
            continue
        try:
            core.patch_node(row.node, sweep.node_patch(row, run_id, moment), _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            problems.append(f"node {row.node}: {exc.status} {exc.reason}")
            if exc.status == 403:
                problems.append("patching nodes needs the ClusterRole gpu-acceptance-label-nodes (rbac.yaml)")
                break
    return problems
