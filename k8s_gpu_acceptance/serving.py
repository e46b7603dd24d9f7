"""The serving check: the GPT-2 service (examples/inference/server.py) as a Deployment + Service, loaded.

Owns the manifests (built on `pods.build_probe_pod`, so the server's pod has the probe pod's least privilege,
tolerations, nodeSelector, runtimeClass and pull secret), the pure rules (is a server pod ready or broken,
what the scaled replicas show, are the figures within budget), and `ServingSession`, a `ScenarioPods`
session (one namespace, lease annotations, cleanup on success/failure/Ctrl-C, --keep) that creates the
objects, waits with the suite's one wait (`wait.wait_for`), scales, and sends the load test's requests.

The load goes through the API server's service proxy (`/api/v1/namespaces/<ns>/services/<svc>:8080/proxy/`)
with the official client: the machine running pytest often cannot reach pod IPs or ClusterIPs (an EKS user
outside the VPC; the single-node GPU host without kube-proxy). An end-to-end latency therefore includes
client -> API server (TLS, authentication, authorization) -> pod -> back, and the queueing behind the
server's one-request-at-a-time lock; the report shows the proxy's own round trip (GET /healthz) and the
server's generate time beside it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes.client.rest import ApiException

from k8s_gpu_acceptance.cluster import GPU_RESOURCE, REQUEST_TIMEOUT, Connection
from k8s_gpu_acceptance.loadtest import PROMPT, Level, Result, percentile, run_level
from k8s_gpu_acceptance.pods import (
    CONTAINER_START_REASONS,
    PodFailure,
    PodState,
    Progress,
    Verdict,
    build_probe_pod,
    checkout_file,
    classify_pod,
)
from k8s_gpu_acceptance.run import run_labels
from k8s_gpu_acceptance.settings import Settings
from k8s_gpu_acceptance.sharing import SCENARIO_ANNOTATION, ScenarioPods
from k8s_gpu_acceptance.wait import Source, wait_for

SERVER_SCRIPT = Path("examples") / "inference" / "server.py"
SERVER_DIR = "/opt/serving"
PORT = 8080
ROLE = "serving"
# Small requests so that only nvidia.com/gpu limits how many replicas fit on a node (as the exhaustion
# check's holders): the Pending replica must be refused for GPUs, not for cpu or memory.
SERVER_REQUESTS = {"cpu": "100m", "memory": "1Gi"}
SERVER_MEMORY_LIMIT = "8Gi"
MAX_EXTRA_REPLICAS = 64  # a node with more free GPUs is not filled (as exhaustion's bound)
SCALE_VERDICT_S = 60.0  # the ReplicaSet makes the pods and the scheduler answers within seconds
REQUEST_TIMEOUT_S = 120.0  # one generate request (8 clients queue behind one lock)
PROXY_PROBES = 10  # GET /healthz through the proxy: the path's own round trip


def server_configmap_data() -> dict[str, str]:
    """The service's one file, examples/inference/server.py, mounted into the pod (any image with python3,
    torch and transformers runs it; the model comes from the probe package mounted beside it)."""
    return {"server.py": checkout_file(SERVER_SCRIPT).read_text(encoding="utf-8")}


def serving_image(settings: Settings) -> str:
    """--serving-image, else --image."""
    return settings.serving_image or settings.image


def serving_labels(run_id: str) -> dict[str, str]:
    """The run's labels with role=serving: the Deployment's selector, its pods' and the Service's."""
    return run_labels(run_id, ROLE)


def serving_manifests(
    settings: Settings,
    run_id: str,
    namespace: str,
    name: str,
    probe_configmap: str,
    items: list[dict[str, str]],
    server_configmap: str,
    node: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Deployment (1 replica, one nvidia.com/gpu, pinned by nodeSelector to `node` when given: still
    placed by the scheduler, never nodeName) and its Service (port 8080), both with the run's labels."""
    pod = build_probe_pod(
        dataclasses.replace(settings, gpus=1, image=serving_image(settings)),
        run_id,
        namespace,
        name,
        probe_configmap,
        items,
    )
    labels = serving_labels(run_id)
    spec = pod["spec"]
    spec.pop("activeDeadlineSeconds", None)  # a Deployment's pods run until scaled down or deleted
    spec["restartPolicy"] = "Always"
    if node:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), "kubernetes.io/hostname": node}
    container = spec["containers"][0]
    container["name"] = "server"
    container["command"] = [
        "python3",
        f"{SERVER_DIR}/server.py",
        "--model",
        settings.model,
        "--port",
        str(PORT),
    ]
    container["ports"] = [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
    container["readinessProbe"] = {
        "httpGet": {"path": "/healthz", "port": "http"},
        "periodSeconds": 2,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }
    container["resources"] = {
        "requests": {**SERVER_REQUESTS, GPU_RESOURCE: "1"},
        "limits": {"memory": SERVER_MEMORY_LIMIT, GPU_RESOURCE: "1"},
    }
    container["volumeMounts"].append({"name": "serving-code", "mountPath": SERVER_DIR, "readOnly": True})
    spec["volumes"].append({"name": "serving-code", "configMap": {"name": server_configmap}})
    annotations = {**pod["metadata"]["annotations"], SCENARIO_ANNOTATION: ROLE}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": {}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": spec},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": {}},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]},
    }
    return deployment, service


# --- pure rules ----------------------------------------------------------------------------------------


def server_pod_verdict(pod: dict[str, Any], events: list[dict[str, Any]] | None = None) -> Verdict:
    """One server pod: done when Ready; failed at once on a known-bad state (classify_pod's, or a server
    process that exited: an image without torch, a model that cannot load, OOMKilled); else wait."""
    status = pod.get("status") or {}
    node = (pod.get("spec") or {}).get("nodeName")
    for cs in status.get("containerStatuses") or []:
        ended = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if ended:
            code, reason = ended.get("exitCode", "?"), ended.get("reason") or "Error"
            message = (ended.get("message") or "").strip()
            return Verdict(
                "fail",
                f"server exited {code} ({reason})",
                PodFailure(
                    "container",
                    reason,
                    f"the server in pod {pod.get('metadata', {}).get('name')} on {node} exited {code} "
                    f"({reason}) before it was ready{': ' + message if message else ''}",
                ),
            )
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if (conditions.get("Ready") or {}).get("status") == "True":
        return Verdict("done", f"Ready on {node}")
    verdict = classify_pod(pod, events)
    if verdict.state == "done":  # Succeeded/Failed: a server pod must never end (evicted, deadline)
        return Verdict("fail", verdict.progress, PodFailure("container", status.get("reason") or "Ended", ""))
    if verdict.state == "wait" and verdict.progress.startswith("Running on"):
        return Verdict("wait", f"{verdict.progress}, not Ready yet (importing torch, loading the model)")
    return verdict


@dataclass(frozen=True)
class Scaled:
    """The replicas after scaling: bound (pod -> node) and Pending (pod -> the scheduler's message)."""

    bound: dict[str, str]
    pending: dict[str, str]
    undecided: list[str] = field(default_factory=list)


def scaled_replicas(pods: list[dict[str, Any]]) -> Scaled:
    """Which replicas the scheduler bound and which it refused, with its message (PodScheduled=False)."""
    bound: dict[str, str] = {}
    pending: dict[str, str] = {}
    undecided: list[str] = []
    for pod in pods:
        state = PodState(pod.get("metadata", {}).get("name", "?"), pod)
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue  # a replica the ReplicaSet is removing does not count
        message = state.unschedulable_message()
        if state.node:
            bound[state.name] = state.node
        elif message is not None:
            pending[state.name] = message
        else:
            undecided.append(state.name)
    return Scaled(bound, pending, undecided)


def load_problems(levels: list[Level], max_p50_ms: float, max_error_rate: float) -> list[str]:
    """What is over budget: the p50 at the lowest concurrency, and the share of failed requests overall."""
    problems: list[str] = []
    if not levels:
        return ["the load test ran no level"]
    first = min(levels, key=lambda lv: lv.concurrency)
    if first.p50_ms is None:
        problems.append(f"no request succeeded at {first.concurrency} client(s)")
    elif first.p50_ms > max_p50_ms:
        problems.append(
            f"p50 {first.p50_ms:g} ms at {first.concurrency} client(s) > budget {max_p50_ms:g} ms "
            "(--serving-max-p50-ms)"
        )
    sent = sum(lv.requests for lv in levels)
    failed = sum(lv.error_count for lv in levels)
    if sent and failed / sent > max_error_rate:
        kinds: dict[str, int] = {}
        for lv in levels:
            for kind, n in lv.errors.items():
                kinds[kind] = kinds.get(kind, 0) + n
        what = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))
        problems.append(
            f"{failed} of {sent} requests failed ({failed / sent:.1%} > budget {max_error_rate:.1%}, "
            f"--serving-max-error-rate): {what}"
        )
    return problems


def level_row(level: Level, generate_ms: list[float]) -> dict[str, Any]:
    """One row of the report's sweep table: the load test's figures and the server's own generate p50."""
    row = dataclasses.asdict(level)
    server = percentile(generate_ms, 50)
    row["server_generate_ms_p50"] = round(server, 2) if server is not None else None
    return row


@dataclass
class ServingRun:
    """The deployed service as the serving tests find it: where, which pod is Ready, or why none is."""

    session: ServingSession
    node: str
    allocatable: int
    ready_pod: str | None
    failure: PodFailure | None
    timeline: list[str]
    ready_after_s: float


# --- the session ---------------------------------------------------------------------------------------


class ServingSession(ScenarioPods):
    """The serving check's namespace (`gpu-acceptance-<run id>-serve`), its ConfigMaps, the Deployment and
    the Service: created with the lease annotations, cleaned up (or kept) with the session."""

    def __init__(self, connection: Connection, settings: Settings, run_id: str, progress: Progress) -> None:
        super().__init__(connection, settings, run_id, "serve", progress)
        self.deployment = self.name("gpt2-serving")
        self.server_configmap = self.name("gpt2-server")

    def deploy(
        self, node: str | None, customize: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """The server ConfigMap, the Deployment (changed by `customize` first, if given) and the Service;
        returns the Deployment as created."""
        meta = {"name": self.server_configmap, "labels": serving_labels(self.run_id), "annotations": {}}
        self.create("configmap", {"metadata": meta, "data": server_configmap_data()})
        deployment, service = serving_manifests(
            self.settings,
            self.run_id,
            self.namespace,
            self.deployment,
            self.configmap_name,
            self.items,
            self.server_configmap,
            node,
        )
        if customize is not None:
            customize(deployment)
        self.create("deployment", deployment)
        self.create("service", service)
        return deployment

    def server_pods(self) -> list[dict[str, Any]]:
        """The Deployment's pods as API JSON, by name."""
        selector = ",".join(f"{k}={v}" for k, v in serving_labels(self.run_id).items())
        items = self.core.list_namespaced_pod(
            self.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
        ).items
        pods = [self.api.sanitize_for_serialization(p) for p in items]
        return sorted(pods, key=lambda p: p["metadata"]["name"])

    def log_tail(self, pod: str, lines: int = 12) -> str:
        """The server's last log lines (the exited container's, when it restarted), for a failure message."""
        for previous in (True, False):
            try:
                text = self.core.read_namespaced_pod_log(
                    pod,
                    self.namespace,
                    container="server",
                    previous=previous,
                    tail_lines=lines,
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                ).data.decode("utf-8", errors="replace")
            except ApiException:
                continue
            if text.strip():
                return "; its log ends: " + " | ".join(line.strip() for line in text.strip().splitlines())
        return ""

    def _watch_deployment(self, condition: Callable[[Any], Any], timeout_s: float) -> Any:
        """wait_for on the Deployment: judged on each of its changes and at every window's end (a pod's
        failure does not change the Deployment, so its pods are read in the condition)."""
        source = Source(
            self.apps.list_namespaced_deployment,
            (self.namespace,),
            {"field_selector": f"metadata.name={self.deployment}"},
        )
        self.renew()
        return wait_for(
            source,
            [self.deployment],
            condition,
            new=PodState,
            timeout_s=timeout_s,
        ).verdicts.get(self.deployment)

    def wait_ready(self, timeout_s: float) -> tuple[str | None, PodFailure | None, list[str]]:
        """Until one server pod is Ready: (its name, None, timeline), or (None, the failure, timeline)."""
        started = time.monotonic()
        timeline: list[str] = []

        def note(line: str) -> None:
            stamp = f"+{time.monotonic() - started:5.1f}s"
            if not timeline or not timeline[-1].endswith(line):
                timeline.append(f"{stamp} {line}")
                self.progress(f"serving {self.namespace}/{self.deployment}: {line} ({stamp})")

        def condition(_seen: Any) -> tuple[str | None, PodFailure | None] | None:
            pods = self.server_pods()
            if not pods:
                note("no pod yet (ReplicaSet)")
            for pod in pods:
                name = pod["metadata"]["name"]
                verdict = server_pod_verdict(pod, self.events_of(name))
                note(f"{name}: {verdict.progress}")
                if verdict.state == "done":
                    return name, None
                if verdict.state == "fail" and verdict.failure is not None:
                    failure = verdict.failure
                    if failure.reason not in CONTAINER_START_REASONS and failure.kind == "container":
                        failure = dataclasses.replace(failure, message=failure.message + self.log_tail(name))
                    return None, failure
            return None

        found = self._watch_deployment(condition, timeout_s)
        if found is None:
            last = timeline[-1].split(" ", 2)[-1] if timeline else "unknown"
            return (
                None,
                PodFailure(
                    "timeout",
                    "NotReady",
                    f"no server pod was Ready within --pod-timeout={timeout_s:g}s (last state: {last})",
                ),
                timeline,
            )
        return found[0], found[1], timeline

    def scale(self, replicas: int) -> Scaled:
        """Scale the Deployment and wait until every replica is bound or refused by the scheduler."""
        self.apps.patch_namespaced_deployment_scale(
            self.deployment,
            self.namespace,
            {"spec": {"replicas": replicas}},
            _request_timeout=REQUEST_TIMEOUT,
        )
        last: list[Scaled] = []

        def condition(_seen: Any) -> Scaled | None:
            scaled = scaled_replicas(self.server_pods())
            last[:] = [scaled]
            if len(scaled.bound) + len(scaled.pending) >= replicas and not scaled.undecided:
                return scaled
            return None

        decided = self._watch_deployment(condition, SCALE_VERDICT_S)
        if decided is not None:
            return decided
        return last[0] if last else Scaled({}, {}, [])

    # -- requests through the API server's service proxy ------------------------------------------------
    def _proxy_path(self, path: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/services/{self.deployment}:{PORT}/proxy/{path}"

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        """One request through the service proxy, authenticated as the suite's client: (status, JSON).

        Sent through the client's own urllib3 pool (its TLS settings and client certificate) with the
        headers of `auth_settings()` (a bearer token, refreshed by the kubeconfig's hook): kubernetes clients
        36 and 37 build API requests differently, their pool and auth settings are the same."""
        configuration = self.api.configuration
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        for setting in configuration.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        response = self.api.rest_client.pool_manager.request(
            method,
            configuration.host + self._proxy_path(path),
            body=None if body is None else json.dumps(body).encode(),
            headers=headers,
            timeout=urllib3.Timeout(connect=REQUEST_TIMEOUT[0], read=REQUEST_TIMEOUT_S),
        )
        if not 200 <= response.status < 300:
            return response.status, {}
        answer: dict[str, Any] = json.loads(response.data)
        return response.status, answer

    def sender(self, new_tokens: int, generate_ms: list[float]) -> Callable[[], Result]:
        """The load test's `send`: POST /generate through the proxy; the server's generate time is kept."""
        body = {"prompt": PROMPT, "max_new_tokens": new_tokens}

        def send() -> Result:
            started = time.perf_counter()
            try:
                status, answer = self._call("POST", "generate", body)
            except Exception as exc:  # urllib3's timeouts and connection errors, by their class name
                name = type(exc).__name__
                return "timeout" if "Timeout" in name else f"connection: {name}"
            elapsed = (time.perf_counter() - started) * 1000
            if status >= 300:
                return f"HTTP {status}"
            if isinstance(answer.get("generate_ms"), (int, float)):
                generate_ms.append(float(answer["generate_ms"]))
            return elapsed, int(answer.get("new_tokens", 0))

        return send

    def proxy_round_trip_ms(self, probes: int = PROXY_PROBES) -> list[float]:
        """GET /healthz through the proxy `probes` times: what the path adds to every request."""
        times = []
        for _ in range(probes):
            started = time.perf_counter()
            status, _answer = self._call("GET", "healthz")
            if status == 200:
                times.append((time.perf_counter() - started) * 1000)
        return times

    def sweep(
        self, levels: list[int], per_client: int, new_tokens: int
    ) -> tuple[list[Level], list[dict[str, Any]]]:
        """One warm-up request, then each concurrency level: the load test's figures, and the report's rows
        (with the server's own generate p50)."""
        self.sender(new_tokens, [])()
        measured, rows = [], []
        for n in levels:
            generate_ms: list[float] = []
            level = run_level(self.sender(new_tokens, generate_ms), n, per_client)
            measured.append(level)
            rows.append(level_row(level, generate_ms))
            self.progress(
                f"serving: {n} client(s): p50 {level.p50_ms} ms, {level.requests_per_s} req/s, "
                f"{level.tokens_per_s} tok/s, {level.error_count} error(s)"
            )
        return measured, rows
