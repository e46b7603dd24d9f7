"""Connecting to the cluster and reading what the cluster-only layers assert on.

Owns `Connection` and `connect` (kubeconfig / context / in-cluster, validated), the API error wording, and the
facts the cluster layers read (`ClusterFacts`, `DevicePluginFacts`).

Everything here uses the official kubernetes client. Connection problems that the user can fix before any
test runs (a missing kubeconfig, an unknown context) become `pytest.UsageError` at start; an API server
that does not answer is the `cluster` layer's failure, found within seconds thanks to short timeouts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from k8s_gpu_acceptance.reachability import check
from k8s_gpu_acceptance.settings import Settings

GPU_RESOURCE = "nvidia.com/gpu"
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
REQUEST_TIMEOUT = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
_SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def api_json(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the official client and return the API server's JSON as it came (dicts, camelCase keys, times as
    strings), skipping the client's model deserialization: parsing every timestamp of every object with
    dateutil was the suite's largest CPU cost in a 1000-node sweep (bench/bench_sweep.py)."""
    response = call(*args, **kwargs, _preload_content=False)
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def in_cluster() -> bool:
    """True inside a pod with a service account (e.g. the nightly CronJob in manifests/)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and _SA_TOKEN.is_file()


def kubeconfig_path(settings: Settings) -> Path | None:
    """The kubeconfig the client would read, if one exists."""
    candidate = Path(settings.kubeconfig or "~/.kube/config").expanduser()
    return candidate if candidate.is_file() else None


def resolve_target(settings: Settings) -> str:
    """auto means k8s when a kubeconfig or in-cluster config exists, else this host."""
    if settings.target != "auto":
        return settings.target
    return "k8s" if kubeconfig_path(settings) or in_cluster() else "local"


@dataclass(frozen=True)
class Connection:
    """An API client and a human description of where it points (no credentials)."""

    api: client.ApiClient
    server: str
    description: str


def connect(settings: Settings) -> Connection:
    """Build a client from --kubeconfig/--context or the in-cluster config; UsageError names the fix."""
    path = kubeconfig_path(settings)
    if path is None and settings.kubeconfig:
        raise pytest.UsageError(
            f"kubeconfig {settings.kubeconfig} does not exist (from "
            f"{settings.sources.get('kubeconfig', '?')}); pass --kubeconfig PATH or "
            "unset KUBECONFIG to use ~/.kube/config"
        )
    if path is None:
        if not in_cluster():
            raise pytest.UsageError(
                "--target k8s: no kubeconfig (~/.kube/config, $KUBECONFIG, --kubeconfig) "
                "and not running in a pod; pass --kubeconfig or use --target local"
            )
        if settings.context:
            raise pytest.UsageError("--context needs a kubeconfig; in-cluster config has no contexts")
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        _harden(configuration)
        return Connection(client.ApiClient(configuration), configuration.host, "in-cluster service account")
    try:
        contexts, active = config.list_kube_config_contexts(config_file=str(path))
    except (ConfigException, OSError, ValueError) as exc:
        raise pytest.UsageError(
            f"kubeconfig {path} cannot be read: {_first_line(exc)}; fix the file or pass --kubeconfig PATH"
        ) from None
    except Exception as exc:  # a garbled YAML file raises yaml's own errors
        raise pytest.UsageError(f"kubeconfig {path} is not valid YAML: {_first_line(exc)}") from None
    names = [c["name"] for c in contexts or []]
    if settings.context and settings.context not in names:
        raise pytest.UsageError(
            f"--context {settings.context!r} is not in {path}; available: {', '.join(names) or 'none'}"
        )
    if not settings.context and not active:
        raise pytest.UsageError(
            f"{path} has no current-context; pass --context (available: {', '.join(names) or 'none'})"
        )
    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=str(path),
            context=settings.context,
            client_configuration=configuration,
            persist_config=False,
        )
    except (ConfigException, OSError, ValueError) as exc:
        raise pytest.UsageError(
            f"kubeconfig {path}, context {settings.context or active['name']}: {_first_line(exc)}"
        ) from None
    _harden(configuration)
    context = settings.context or active["name"]
    return Connection(
        client.ApiClient(configuration), configuration.host, f"kubeconfig {path}, context {context}"
    )


def _harden(configuration: client.Configuration) -> None:
    """Few retries: an unreachable API server must fail in seconds, not minutes."""
    configuration.retries = urllib3.util.Retry(total=1, connect=1, read=0, backoff_factor=0.2)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def describe_api_error(exc: BaseException, server: str) -> str:
    """One line for any failure to talk to the API server, naming what to check."""
    if isinstance(exc, ApiException):
        if exc.status in (401, 403):
            return (
                f"API server {server} refused the request ({exc.status} {exc.reason}): check the "
                "credentials of the kubeconfig user and the RBAC in manifests/base/rbac.yaml"
            )
        return f"API server {server} answered {exc.status} {exc.reason}: {api_message(exc)}"
    cause: BaseException = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        nxt = cause.__cause__ or cause.__context__
        assert nxt is not None
        cause = nxt
    return (
        f"cannot reach the API server at {server}: {type(cause).__name__}: {_first_line(cause)}; check "
        "that the cluster is running, the kubeconfig's server address, VPN/firewall, and --context"
    )


def api_message(exc: ApiException) -> str:
    """The API server's own message (its Status.message), else the raw body."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.body)
    except (ValueError, AttributeError):
        return str(exc.body)


@dataclass
class NodeFacts:
    """What the suite needs of one node."""

    name: str
    ready: bool
    unschedulable: bool
    gpu_capacity: int
    gpu_allocatable: int
    labels: dict[str, str]
    taints: list[dict[str, Any]]
    kubelet_version: str = ""

    @property
    def is_gpu_node(self) -> bool:
        return self.gpu_capacity > 0 or self.labels.get("nvidia.com/gpu.present") == "true"


@dataclass
class ClusterFacts:
    """The cluster layer's evidence: reachable or not, version, nodes."""

    server: str
    description: str
    reachable: bool = False
    error: str | None = None
    version: str | None = None
    nodes: list[NodeFacts] = field(default_factory=list)
    unreachable_kind: str | None = None  # reachability.Unreachable.kind: refused, timeout, dns, tls, ...

    @property
    def gpu_nodes(self) -> list[NodeFacts]:
        return [n for n in self.nodes if n.is_gpu_node]


def node_facts(node: dict[str, Any]) -> NodeFacts:
    """Flatten a node's API JSON into the facts the layers use."""
    meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    return NodeFacts(
        name=meta.get("name", ""),
        ready=ready,
        unschedulable=bool(spec.get("unschedulable")),
        gpu_capacity=int((status.get("capacity") or {}).get(GPU_RESOURCE, "0")),
        gpu_allocatable=int((status.get("allocatable") or {}).get(GPU_RESOURCE, "0")),
        labels=dict(meta.get("labels") or {}),
        taints=[
            {"key": t.get("key"), "value": t.get("value"), "effect": t.get("effect")}
            for t in spec.get("taints") or []
        ],
        kubelet_version=(status.get("nodeInfo") or {}).get("kubeletVersion", ""),
    )


def gather_cluster_facts(connection: Connection) -> ClusterFacts:
    """Ask the API server for its version and nodes; never raises, failures become `error`."""
    facts = ClusterFacts(server=connection.server, description=connection.description)
    unreachable = check(connection.api, connection.server, proxy=connection.api.configuration.proxy)
    if unreachable is not None:
        facts.error, facts.unreachable_kind = unreachable.seen, unreachable.kind
        return facts
    try:
        version = client.VersionApi(connection.api).get_code(_request_timeout=REQUEST_TIMEOUT)
        facts.version = version.git_version
        nodes = api_json(client.CoreV1Api(connection.api).list_node, _request_timeout=REQUEST_TIMEOUT)
    except Exception as exc:
        facts.error = describe_api_error(exc, connection.server)
        return facts
    facts.reachable = True
    facts.nodes = [node_facts(n) for n in nodes.get("items") or []]
    return facts


DEVICE_PLUGIN_NAMES = ("nvidia-device-plugin",)


@dataclass
class DevicePluginFacts:
    """The NVIDIA device plugin DaemonSet(s) found, and on which nodes their pods are Ready."""

    daemonsets: list[dict[str, Any]] = field(default_factory=list)
    ready_nodes: set[str] = field(default_factory=set)
    error: str | None = None


def is_device_plugin(ds: dict[str, Any]) -> bool:
    """Upstream static manifest, Helm chart and GPU Operator all name it nvidia-device-plugin*."""
    meta = ds.get("metadata") or {}
    labels = meta.get("labels") or {}
    return (
        any(n in meta.get("name", "") for n in DEVICE_PLUGIN_NAMES)
        or labels.get("app.kubernetes.io/name") == "nvidia-device-plugin"
        or labels.get("app") == "nvidia-device-plugin-daemonset"
    )


def gather_device_plugin_facts(connection: Connection) -> DevicePluginFacts:
    """Find the device plugin DaemonSets cluster-wide and where their pods are Ready."""
    facts = DevicePluginFacts()
    apps = client.AppsV1Api(connection.api)
    core = client.CoreV1Api(connection.api)
    try:
        listed = api_json(apps.list_daemon_set_for_all_namespaces, _request_timeout=REQUEST_TIMEOUT)
        for ds in [ds for ds in listed.get("items") or [] if is_device_plugin(ds)]:
            meta, spec, status = ds["metadata"], ds.get("spec") or {}, ds.get("status") or {}
            match = (spec.get("selector") or {}).get("matchLabels") or {}
            selector = ",".join(f"{k}={v}" for k, v in match.items())
            pods = api_json(
                core.list_namespaced_pod,
                meta["namespace"],
                label_selector=selector,
                _request_timeout=REQUEST_TIMEOUT,
            )
            for pod in pods.get("items") or []:
                conditions = (pod.get("status") or {}).get("conditions") or []
                ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
                node = (pod.get("spec") or {}).get("nodeName")
                if ready and node:
                    facts.ready_nodes.add(node)
            containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
            facts.daemonsets.append(
                {
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "image": ", ".join(str(c.get("image")) for c in containers),
                    "desired": status.get("desiredNumberScheduled"),
                    "ready": status.get("numberReady"),
                    "available": status.get("numberAvailable") or 0,
                }
            )
    except Exception as exc:
        facts.error = describe_api_error(exc, connection.server)
    return facts
