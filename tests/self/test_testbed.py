"""The testbed, checked against the live cluster: real apiserver, real scheduler, simulated (kwok) nodes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from kubernetes import client

from testbed.cluster import wait_for

GPU = "nvidia.com/gpu"
TIMEOUT = 60.0
H100_LABELS = {
    "nvidia.com/gpu.present": "true",
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    "nvidia.com/gpu.memory": "81559",
    "nvidia.com/cuda.driver.major": "580",
    "nvidia.com/cuda.driver.minor": "159",
    "nvidia.com/cuda.driver.rev": "04",
    "nvidia.com/cuda.runtime.major": "13",
    "nvidia.com/cuda.runtime.minor": "0",
}


def pod_body(
    name: str,
    gpus: int = 0,
    tolerate: bool = False,
    probe: bool = False,
    image: str = "registry.k8s.io/pause:3.10",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image}
    if gpus:
        container["resources"] = {"limits": {GPU: str(gpus)}}
    labels = {"app.kubernetes.io/managed-by": "k8s-gpu-acceptance"}
    if probe:
        labels["k8s-gpu-acceptance/role"] = "probe"
    spec: dict[str, Any] = {"containers": [container], "restartPolicy": "Never"}
    if tolerate:
        spec["tolerations"] = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"name": name, "labels": labels, "annotations": annotations or {}}, "spec": spec}


def wait_pod(core: client.CoreV1Api, ns: str, name: str, done: Any, what: str) -> client.V1Pod:
    """Watch one pod until `done(pod)`, with a deadline."""
    listed = wait_for(
        core.list_namespaced_pod,
        lambda pl: bool(pl.items) and done(pl.items[0]),
        f"pod {ns}/{name}: {what}",
        TIMEOUT,
        namespace=ns,
        field_selector=f"metadata.name={name}",
    )
    pod: client.V1Pod = listed.items[0]
    return pod


def scheduled(core: client.CoreV1Api, ns: str, name: str) -> str:
    pod = wait_pod(core, ns, name, lambda p: bool(p.spec.node_name), "bound to a node")
    node: str = pod.spec.node_name
    return node


def failed_scheduling(core: client.CoreV1Api, ns: str, name: str, text: str) -> str:
    """Wait for the scheduler's FailedScheduling event on the pod that contains `text`."""
    events = wait_for(
        core.list_namespaced_event,
        lambda el: any(text in (e.message or "") for e in el.items),
        f"FailedScheduling event with {text!r} for {ns}/{name}",
        TIMEOUT,
        namespace=ns,
        field_selector=f"involvedObject.name={name},reason=FailedScheduling",
    )
    return str(next(e.message for e in events.items if text in (e.message or "")))


@pytest.fixture
def core(testbed_api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(testbed_api)


def test_gpu_nodes_have_allocatable_gpus_and_gfd_labels(core: client.CoreV1Api) -> None:
    nodes = {n.metadata.name: n for n in core.list_node().items}
    assert {"gpu-node-1", "gpu-node-8", "cpu-node"} <= set(nodes)
    for name, count in (("gpu-node-1", "1"), ("gpu-node-8", "8")):
        node = nodes[name]
        assert node.status.capacity[GPU] == count
        assert node.status.allocatable[GPU] == count
        assert {k: node.metadata.labels.get(k) for k in H100_LABELS} == H100_LABELS
        assert node.metadata.labels["nvidia.com/gpu.count"] == count
        assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
    taints = [(t.key, t.value, t.effect) for t in nodes["gpu-node-8"].spec.taints or []]
    assert taints == [(GPU, "true", "NoSchedule")]
    assert not nodes["gpu-node-1"].spec.taints
    assert GPU not in nodes["cpu-node"].status.allocatable
    assert "nvidia.com/gpu.present" not in nodes["cpu-node"].metadata.labels


def test_device_plugin_pods_ready_on_gpu_nodes(testbed_api: client.ApiClient, core: client.CoreV1Api) -> None:
    ds = client.AppsV1Api(testbed_api).read_namespaced_daemon_set(
        "nvidia-device-plugin-daemonset", "kube-system"
    )
    assert ds.spec.selector.match_labels == {"name": "nvidia-device-plugin-ds"}
    pods = core.list_namespaced_pod("kube-system", label_selector="name=nvidia-device-plugin-ds").items
    ready_on = {
        p.spec.node_name
        for p in pods
        if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions)
    }
    gpu_nodes = {n.metadata.name for n in core.list_node(label_selector="nvidia.com/gpu.present=true").items}
    assert ready_on == gpu_nodes
    assert client.NodeV1Api(testbed_api).read_runtime_class("nvidia").handler == "nvidia"


def test_one_gpu_pod_is_bound_to_gpu_node_1(core: client.CoreV1Api, testbed_namespace: str) -> None:
    core.create_namespaced_pod(testbed_namespace, pod_body("one-gpu", gpus=1))
    assert scheduled(core, testbed_namespace, "one-gpu") == "gpu-node-1"


def test_eight_gpu_pod_with_toleration_is_bound_to_gpu_node_8(
    core: client.CoreV1Api, testbed_namespace: str
) -> None:
    core.create_namespaced_pod(testbed_namespace, pod_body("eight-gpus", gpus=8, tolerate=True))
    assert scheduled(core, testbed_namespace, "eight-gpus") == "gpu-node-8"


def test_64_gpu_pod_stays_pending_with_insufficient_gpu(
    core: client.CoreV1Api, testbed_namespace: str
) -> None:
    core.create_namespaced_pod(testbed_namespace, pod_body("too-many", gpus=64, tolerate=True))
    message = failed_scheduling(core, testbed_namespace, "too-many", "Insufficient nvidia.com/gpu")
    pod = core.read_namespaced_pod("too-many", testbed_namespace)
    assert pod.status.phase == "Pending", message
    assert not pod.spec.node_name


def test_pod_without_toleration_never_lands_on_tainted_node(
    core: client.CoreV1Api, testbed_namespace: str
) -> None:
    # Two GPUs exist only on the tainted gpu-node-8: without the toleration the scheduler must refuse it.
    core.create_namespaced_pod(testbed_namespace, pod_body("needs-taint", gpus=2))
    message = failed_scheduling(core, testbed_namespace, "needs-taint", "untolerated taint")
    assert "nvidia.com/gpu" in message
    # Pods that fit anywhere are spread over the untainted nodes only.
    for i in range(6):
        core.create_namespaced_pod(testbed_namespace, pod_body(f"plain-{i}"))
    placed = {scheduled(core, testbed_namespace, f"plain-{i}") for i in range(6)}
    assert "gpu-node-8" not in placed
    assert not core.read_namespaced_pod("needs-taint", testbed_namespace).spec.node_name


@pytest.fixture
def recording(testbed: Any) -> Any:
    """A temporary recording with bytes that trip naive log handling (CRLF, blank lines, no final newline)."""
    name = f"selftest-{uuid.uuid4().hex[:8]}"
    path = Path(testbed.recordings_dir) / f"{name}.log"
    data = (
        b'{\n  "a": 1\r\n\n\tb \xc3\xa9 \xff\n'
        + os.urandom(64).replace(b"\n", b"")
        + b"\nlast line, no newline"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    yield name, data
    path.unlink(missing_ok=True)


def kubectl_logs(testbed: Any, ns: str, name: str) -> bytes:
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", str(testbed.kubeconfig), "logs", "-n", ns, name],
        capture_output=True,
        check=True,
        timeout=TIMEOUT,
    )
    return proc.stdout


def test_probe_pod_succeeds_and_kubectl_logs_is_the_recording(
    testbed: Any, core: client.CoreV1Api, testbed_namespace: str, recording: tuple[str, bytes]
) -> None:
    name, data = recording
    annotations = {"testbed.k8s-gpu-acceptance.io/recording": name}
    core.create_namespaced_pod(
        testbed_namespace, pod_body("probe", gpus=1, probe=True, annotations=annotations)
    )
    pod = wait_pod(
        core, testbed_namespace, "probe", lambda p: p.status.phase in ("Succeeded", "Failed"), "done"
    )
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    assert kubectl_logs(testbed, testbed_namespace, "probe") == data


@pytest.mark.parametrize(("gpus", "default"), [(1, "h100"), (0, "cpu")])
def test_probe_pod_default_recording(
    testbed: Any, core: client.CoreV1Api, testbed_namespace: str, gpus: int, default: str
) -> None:
    path = Path(testbed.recordings_dir) / f"{default}.log"
    if not path.is_file():
        pytest.skip(f"{path} is not committed yet (the probe's real recordings)")
    core.create_namespaced_pod(testbed_namespace, pod_body("probe", gpus=gpus, probe=True))
    pod = wait_pod(
        core, testbed_namespace, "probe", lambda p: p.status.phase in ("Succeeded", "Failed"), "done"
    )
    assert pod.status.phase == "Succeeded"
    assert kubectl_logs(testbed, testbed_namespace, "probe") == path.read_bytes()


def test_probe_pod_with_unknown_recording_fails_with_reason(
    core: client.CoreV1Api, testbed_namespace: str
) -> None:
    annotations = {"testbed.k8s-gpu-acceptance.io/recording": "no-such-recording"}
    core.create_namespaced_pod(testbed_namespace, pod_body("probe", probe=True, annotations=annotations))
    pod = wait_pod(
        core, testbed_namespace, "probe", lambda p: p.status.phase in ("Succeeded", "Failed"), "done"
    )
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.reason == "RecordingNotFound"
    assert "no-such-recording" in terminated.message


def test_missing_image_waits_in_image_pull_backoff(core: client.CoreV1Api, testbed_namespace: str) -> None:
    body = pod_body("bad-image", probe=True, image="registry.example.com/does-not-exist:1.0")
    core.create_namespaced_pod(testbed_namespace, body)

    def waiting(reason: str) -> Any:
        return lambda p: any(
            s.state.waiting is not None and s.state.waiting.reason == reason
            for s in p.status.container_statuses or []
        )

    wait_pod(core, testbed_namespace, "bad-image", waiting("ErrImagePull"), "ErrImagePull")
    pod = wait_pod(core, testbed_namespace, "bad-image", waiting("ImagePullBackOff"), "ImagePullBackOff")
    assert pod.status.phase == "Pending"
    assert "does-not-exist" in pod.status.container_statuses[0].state.waiting.message


def test_minio_bucket_put_list_get(testbed: Any) -> None:
    env = testbed.env
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    bucket = f"selftest-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    try:
        s3.put_object(Bucket=bucket, Key="reports/latest.json", Body=b'{"ok": true}')
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
        assert keys == ["reports/latest.json"]
        assert s3.get_object(Bucket=bucket, Key="reports/latest.json")["Body"].read() == b'{"ok": true}'
    finally:
        for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=o["Key"])
        s3.delete_bucket(Bucket=bucket)


def test_cli_env_and_status(testbed: Any) -> None:
    env = subprocess.run(
        [sys.executable, "-m", "testbed", "env"], capture_output=True, text=True, check=True, timeout=TIMEOUT
    ).stdout
    exports = dict(line.removeprefix("export ").split("=", 1) for line in env.splitlines())
    assert exports.keys() == testbed.env.keys()
    assert exports["KUBECONFIG"] == str(testbed.kubeconfig)
    status = subprocess.run(
        [sys.executable, "-m", "testbed", "status"], capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stdout + status.stderr
