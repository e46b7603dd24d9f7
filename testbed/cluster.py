"""The kwok cluster: a real etcd, kube-apiserver, kube-scheduler and kube-controller-manager,
started by kwokctl from the locally built binaries (binary runtime, nothing downloaded),
with SIMULATED nodes played by kwok.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from testbed.errors import TestbedError
from testbed.manifests import DEVICE_PLUGIN_NAME, device_plugin_daemonset, nvidia_runtime_class
from testbed.nodes import MANAGED_BY, NodeSpec
from testbed.stages import kwok_config_yaml

CLUSTER_NAME = "k8s-gpu-acceptance"
CREATE_TIMEOUT = "180s"


def kwokctl_env(workdir: Path, bindir: Path) -> dict[str, str]:
    """kwokctl keeps its cluster files in our state dir and uses our kubectl (the multicall binary)."""
    env = dict(os.environ)
    env["KWOK_WORKDIR"] = str(workdir)
    env["KWOK_KUBECTL_BINARY"] = str(bindir / "kubectl")
    return env


def pki_dir(workdir: Path) -> Path:
    """kwokctl's CA and admin certificate (the real node's kubelet certificate is signed by this CA)."""
    return workdir / "clusters" / CLUSTER_NAME / "pki"


def kwokctl_patches(workdir: Path) -> dict[str, Any]:
    """Component flags on top of kwokctl's defaults.

    - kwok-controller: kwokctl's binary runtime makes kwok manage ALL nodes; only the simulated ones
      (annotated `kwok.x-k8s.io/node: fake`, testbed/nodes.py) are its: the real node has a real kubelet.
    - kube-apiserver: talk to the real kubelet (logs, exec) with the admin client certificate, at its
      InternalIP (the node name is not resolvable).
    """
    pki = pki_dir(workdir)
    return {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "componentsPatches": [
            {
                "name": "kwok-controller",
                "extraArgs": [
                    {"key": "manage-all-nodes", "value": "false", "override": True},
                    {"key": "manage-nodes-with-annotation-selector", "value": "kwok.x-k8s.io/node=fake"},
                ],
            },
            {
                "name": "kube-apiserver",
                "extraArgs": [
                    {"key": "kubelet-client-certificate", "value": str(pki / "admin.crt")},
                    {"key": "kubelet-client-key", "value": str(pki / "admin.key")},
                    {"key": "kubelet-preferred-address-types", "value": "InternalIP,Hostname"},
                ],
            },
        ],
    }


def kwokctl(bindir: Path, workdir: Path, args: list[str], timeout: float = 300) -> str:
    """Run kwokctl; on failure raise with its output."""
    cmd = [str(bindir / "kwokctl"), *args]
    proc = subprocess.run(
        cmd, env=kwokctl_env(workdir, bindir), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise TestbedError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def create_cluster(bindir: Path, workdir: Path, kubeconfig: Path, kwok_controller: bool = True) -> None:
    """kwokctl create cluster, every component pointed at a local binary (a path is linked, never fetched).

    Without `kwok_controller` (a GPU host: no simulated nodes) kwokctl starts only the real control plane.
    """
    kwok_args = (
        ["--kwok-controller-binary", str(bindir / "kwok")]
        if kwok_controller
        else ["--disable", "kwok-controller"]
    )
    config_file = workdir.parent / "kwok-stages.yaml"
    config_file.write_text(
        kwok_config_yaml() + "---\n" + yaml.safe_dump(kwokctl_patches(workdir), sort_keys=False)
    )
    kwokctl(
        bindir,
        workdir,
        [
            "create",
            "cluster",
            "--name",
            CLUSTER_NAME,
            "--runtime",
            "binary",
            "--kubeconfig",
            str(kubeconfig),
            "--config",
            str(config_file),
            "--kube-apiserver-binary",
            str(bindir / "kube-apiserver"),
            "--kube-scheduler-binary",
            str(bindir / "kube-scheduler"),
            "--kube-controller-manager-binary",
            str(bindir / "kube-controller-manager"),
            *kwok_args,
            "--etcd-binary",
            str(bindir / "etcd"),
            # Namespaced Logs objects are how the recording controller attaches a recording to one pod.
            "--enable-crds",
            "Logs",
            # A test cluster: no client-side rate limits (1000 nodes get their DaemonSet pods fast).
            "--disable-qps-limits",
            "--wait",
            CREATE_TIMEOUT,
            "--timeout",
            CREATE_TIMEOUT,
        ],
    )


def delete_cluster(bindir: Path, workdir: Path, kubeconfig: Path) -> None:
    """kwokctl stops the component processes it started (from its own PID files)."""
    kwokctl(bindir, workdir, ["delete", "cluster", "--name", CLUSTER_NAME, "--kubeconfig", str(kubeconfig)])


def api(kubeconfig: Path) -> client.ApiClient:
    """A client for the testbed cluster, never the user's default kubeconfig."""
    return config.new_client_from_config(config_file=str(kubeconfig))


def apiserver_ready(kubeconfig: Path) -> bool:
    """The apiserver answers a read that needs etcd (portable across client versions, unlike /readyz)."""
    try:
        with api(kubeconfig) as c:
            client.CoreV1Api(c).list_namespace(limit=1, _request_timeout=5)
        return True
    except Exception:
        return False


def create_or_replace(create: Callable[[], Any], replace: Callable[[], Any]) -> None:
    """Apply semantics for one object."""
    try:
        create()
    except ApiException as exc:
        if exc.status != 409:
            raise
        replace()


SPEC_ANNOTATION = "testbed.k8s-gpu-acceptance.io/node-spec"


def node_manifest(spec: NodeSpec) -> dict[str, Any]:
    """The Node object, annotated with a digest of itself so that a changed spec is noticed."""
    manifest = spec.manifest()
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    manifest["metadata"].setdefault("annotations", {})[SPEC_ANNOTATION] = digest
    return manifest


def reconcile_nodes(
    api_client: client.ApiClient, specs: Iterable[NodeSpec], workers: int = 32
) -> tuple[list[str], bool]:
    """Make the testbed's nodes exactly `specs`, concurrently (a benchmark asks for 1000); True if changed.

    Missing nodes are created, surplus ones deleted, and a node whose spec changed (e.g. gpu-node-8 after
    `--gpu-nodes 1000` made it a 1-GPU node) is deleted and created again: capacity lives in the node status.
    """
    core = client.CoreV1Api(api_client)
    wanted = {s.name: node_manifest(s) for s in specs}
    existing = {
        n.metadata.name: (n.metadata.annotations or {}).get(SPEC_ANNOTATION)
        for n in core.list_node(label_selector=f"app.kubernetes.io/managed-by={MANAGED_BY}").items
    }
    stale = [
        n
        for n, digest in existing.items()
        if n not in wanted or digest != wanted[n]["metadata"]["annotations"][SPEC_ANNOTATION]
    ]
    to_create = [m for name, m in wanted.items() if name not in existing or name in stale]

    def delete(name: str) -> None:
        try:
            core.delete_node(name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def create(manifest: dict[str, Any]) -> None:
        for _ in range(50):  # a node deleted just before may still be going away
            try:
                core.create_node(manifest)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
                time.sleep(0.1)
        raise TestbedError(f"node {manifest['metadata']['name']} still exists after deleting it")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(delete, stale))
        list(pool.map(create, to_create))
    return list(wanted), bool(stale or to_create)


def apply_addons(api_client: client.ApiClient) -> None:
    """The nvidia RuntimeClass and the device plugin DaemonSet."""
    node_api = client.NodeV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    rc = nvidia_runtime_class()
    create_or_replace(
        lambda: node_api.create_runtime_class(rc),
        lambda: node_api.patch_runtime_class(rc["metadata"]["name"], rc),
    )
    ds = device_plugin_daemonset()
    create_or_replace(
        lambda: apps.create_namespaced_daemon_set("kube-system", ds),
        lambda: apps.patch_namespaced_daemon_set(DEVICE_PLUGIN_NAME, "kube-system", ds),
    )


def wait_for(
    list_fn: Callable[..., Any], done: Callable[[Any], bool], what: str, timeout: float, **kwargs: Any
) -> Any:
    """List, and if not yet done, watch from that list until `done(list)` holds or the deadline passes.

    Returns the list that satisfied `done`. A watch, not a sleep loop: it wakes on the first change.
    """
    deadline = time.monotonic() + timeout
    while True:
        listed = list_fn(**kwargs)
        if done(listed):
            return listed
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TestbedError(f"timed out after {timeout:.0f}s waiting for {what}")
        stream = watch.Watch().stream(
            list_fn,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=max(1, int(min(remaining, 30))),
            **kwargs,
        )
        for _ in stream:  # any change: list again and re-check
            break


def node_ready(node: client.V1Node) -> bool:
    """Ready condition True (kwok's node-initialize stage sets it)."""
    return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))


def wait_nodes_ready(core: client.CoreV1Api, names: set[str], timeout: float) -> None:
    """List once, then follow the watch node by node (re-listing 1000 nodes on every event is quadratic)."""
    deadline = time.monotonic() + timeout
    listed = core.list_node()
    ready = {n.metadata.name for n in listed.items if node_ready(n)}
    version = listed.metadata.resource_version
    while not names <= ready:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            missing = sorted(names - ready)
            raise TestbedError(f"{len(missing)} nodes not Ready after {timeout:.0f}s, e.g. {missing[:5]}")
        for event in watch.Watch().stream(
            core.list_node, resource_version=version, timeout_seconds=max(1, int(min(remaining, 30)))
        ):
            node = event["object"]
            version = node.metadata.resource_version
            if event["type"] != "DELETED" and node_ready(node):
                ready.add(node.metadata.name)
            else:
                ready.discard(node.metadata.name)
            if names <= ready:
                return


def wait_ready(
    api_client: client.ApiClient, node_names: list[str], gpu_nodes: int, timeout: float = 300
) -> None:
    """All testbed nodes Ready, one device plugin pod Ready per GPU node, and the default ServiceAccount."""
    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    wait_nodes_ready(core, set(node_names), timeout)

    def plugin_ready(dsl: Any) -> bool:
        st = dsl.items[0].status if dsl.items else None
        return bool(st and st.desired_number_scheduled == gpu_nodes and st.number_ready == gpu_nodes)

    wait_for(
        apps.list_namespaced_daemon_set,
        plugin_ready,
        f"{gpu_nodes} device plugin pods Ready",
        timeout,
        namespace="kube-system",
        field_selector=f"metadata.name={DEVICE_PLUGIN_NAME}",
    )
    wait_for(
        core.list_namespaced_service_account,
        lambda sl: bool(sl.items),
        "the default ServiceAccount",
        timeout,
        namespace="default",
        field_selector="metadata.name=default",
    )
