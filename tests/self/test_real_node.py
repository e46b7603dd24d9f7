"""The suite, run as a user runs it, against the testbed's REAL node: a real kubelet, containerd and runc.

Nothing here is replayed: the probe pod really runs (the image built from this host's python3, the probe
mounted from the ConfigMap, UID 10001, read-only root), its log is its own output, its exit code and phase
come from the runtime, and every failure message is the kubelet's or containerd's own. The node's
`nvidia.com/gpu` devices are FAKE (testbed/go/fake-gpu-device-plugin: allocated by the real kubelet, but no
device node is injected), so the GPU layers fail at the driver, for that real reason.

Every run is followed by the leftovers check of `run_suite`; the pods of a run are watched while it runs,
to compare what the suite reports with what the API server saw.
"""

from __future__ import annotations

import calendar
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, dynamic, watch

from testbed.node import REAL_NODE_LABEL

UPPER_LAYERS = ("nvidia_smi", "torch_cuda", "gpt2", "gpu_perf")


@pytest.fixture(scope="module")
def real_node(testbed: Any) -> str:
    """The real node's name; without one (TESTBED_REAL_NODE=0) these tests cannot run."""
    if not testbed.real_node:
        if os.environ.get("TESTBED_REAL_NODE") == "0":
            pytest.skip("TESTBED_REAL_NODE=0: the testbed runs without its real node")
        pytest.fail("the testbed has no real node: bring it up with `python -m testbed up`")
    name: str = testbed.real_node
    return name


def on_real_node(testbed: Any, node: str) -> list[str]:
    """Options that put the suite's probe pod on the real node (tainted, so nothing else lands there)."""
    return [
        f"--image={testbed.probe_image}",
        f"--node-selector=kubernetes.io/hostname={node}",
        "--toleration=nvidia.com/gpu:NoSchedule",
        f"--toleration={REAL_NODE_LABEL}=true:NoSchedule",
    ]


class PodRecorder:
    """Watches the pods of one run id while the suite runs, keeping the last state of each."""

    def __init__(self, core: client.CoreV1Api, run_id: str) -> None:
        self.core = core
        self.run_id = run_id
        self.pods: dict[str, client.V1Pod] = {}
        self.seen: dict[tuple[str, str], float] = {}  # (pod, phase) -> when this watch first saw it
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.ready = threading.Event()

    def _watch(self) -> None:
        selector = f"k8s-gpu-acceptance/run-id={self.run_id}"
        while not self.stop.is_set():
            listed = self.core.list_pod_for_all_namespaces(label_selector=selector)
            for pod in listed.items:
                self._keep(pod)
            self.ready.set()
            for event in watch.Watch().stream(
                self.core.list_pod_for_all_namespaces,
                label_selector=selector,
                resource_version=listed.metadata.resource_version,
                timeout_seconds=2,
            ):
                if event["type"] != "DELETED":
                    self._keep(event["object"])

    def _keep(self, pod: client.V1Pod) -> None:
        self.pods[pod.metadata.name] = pod
        self.seen.setdefault((pod.metadata.name, pod.status.phase or "Pending"), time.monotonic())

    def __enter__(self) -> PodRecorder:
        self.thread.start()
        assert self.ready.wait(30), "could not list pods"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def probe_pod(self) -> client.V1Pod:
        return self.pods[f"gpu-probe-{self.run_id}"]


def new_run_id() -> str:
    return f"selftest-{uuid.uuid4().hex[:8]}"


def terminated(pod: client.V1Pod) -> client.V1ContainerStateTerminated | None:
    statuses = pod.status.container_statuses or []
    return statuses[0].state.terminated if statuses else None


def test_probe_pod_really_runs_there_and_fails_at_the_driver_for_the_real_reason(
    run_suite: Callable[..., Any], testbed: Any, real_node: str, core: client.CoreV1Api
) -> None:
    run_id = new_run_id()
    started = time.time()
    with PodRecorder(core, run_id) as pods:
        run = run_suite(*on_real_node(testbed, real_node), run_id=run_id)
    finished = time.time()
    assert run.ret == 1, run.output
    outcomes = {e["name"]: e["outcome"] for e in run.report["layers"]}
    assert outcomes["cluster"] == outcomes["device_plugin"] == outcomes["scheduling"] == "passed", outcomes
    scheduling = run.layer("scheduling")["metrics"]
    assert scheduling["node"] == real_node and scheduling["phase"] == "Failed", scheduling
    # The CPU path: no /dev/nvidia* although the (fake) device plugin allocated a GPU.
    driver = run.layer("driver")
    assert driver["outcome"] == "failed"
    assert "/dev/nvidia" in driver["diagnosis"]["seen"] or "nvidia" in driver["diagnosis"]["seen"], driver
    assert driver["diagnosis"]["rule"] == "runtime-class-missing", driver["diagnosis"]
    assert "testbed-fake-gpu-" in driver["diagnosis"]["cause"], driver["diagnosis"]
    for name in UPPER_LAYERS:
        assert (run.layer(name)["outcome"], run.layer(name)["blocked_by"]) == ("blocked", "driver"), name
    # Measured now, by this pod, on this machine: not a recording.
    document = run.report["probe_document"]
    pod = pods.probe_pod()
    identity = document["identity"]
    assert (identity["pod_name"], identity["node_name"]) == (pod.metadata.name, pod.spec.node_name)
    assert identity["node_name"] == real_node and identity["pod_namespace"] == pod.metadata.namespace
    assert identity["user_uid"] == 10001 and identity["in_kubernetes"] is True
    assert os.uname().release in identity["platform"]
    probe_started = calendar.timegm(time.strptime(document["started_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert int(started) <= probe_started <= finished, (document["started_at"], started, finished)
    # The pod ended Failed with the probe's own exit code, and the suite still read its document.
    state = terminated(pod)
    assert pod.status.phase == "Failed" and state is not None, pod.status
    assert state.exit_code == document["exit_code"] != 0, (state, document["exit_code"])
    round_trip = pods.seen[(pod.metadata.name, "Failed")] - pods.seen[(pod.metadata.name, "Pending")]
    print(
        f"real pod round trip (seen Pending -> seen Failed): {round_trip:.2f}s; suite run {run.wall_s:.1f}s"
    )


def test_pod_without_gpu_request_sees_no_gpu_on_the_real_node(
    run_suite: Callable[..., Any], testbed: Any, real_node: str
) -> None:
    run = run_suite(*on_real_node(testbed, real_node), markers="gpu and isolation")
    assert run.ret == 0, run.output
    sharing = run.report["environment_details"]["sharing"]
    for variant in ("no-request", "visible-all"):
        entry = sharing[f"isolation.{variant}"]
        assert entry["verdict"] == "isolated" and entry["node"] == real_node, entry


def test_image_not_present_is_diagnosed_from_the_kubelets_message(
    run_suite: Callable[..., Any], testbed: Any, real_node: str
) -> None:
    args = on_real_node(testbed, real_node)
    args[0] = "--image=k8s-gpu-acceptance.local/not-imported:0"
    run = run_suite(*args)
    assert run.ret == 1, run.output
    diagnosis = run.layer("scheduling")["diagnosis"]
    assert diagnosis["rule"] == "image-pull", diagnosis
    assert "ErrImagePull" in diagnosis["seen"] or "ImagePullBackOff" in diagnosis["seen"], diagnosis
    assert "k8s-gpu-acceptance.local/not-imported:0" in diagnosis["seen"], diagnosis
    assert run.wall_s < 60, f"took {run.wall_s:.0f}s"


def test_missing_runtime_handler_is_diagnosed_from_containerds_message(
    run_suite: Callable[..., Any], testbed: Any, real_node: str
) -> None:
    run = run_suite(*on_real_node(testbed, real_node), "--runtime-class=nvidia")
    assert run.ret == 1, run.output
    diagnosis = run.layer("scheduling")["diagnosis"]
    assert diagnosis["rule"] == "runtime-handler-missing", diagnosis
    assert "FailedCreatePodSandBox" in diagnosis["seen"] and '"nvidia"' in diagnosis["seen"], diagnosis
    assert run.wall_s < 60, f"took {run.wall_s:.0f}s"


@pytest.fixture
def admission_policy(
    testbed_api: client.ApiClient, core: client.CoreV1Api, testbed_namespace: str
) -> Iterator[Callable[..., None]]:
    """A MutatingAdmissionPolicy (GA in Kubernetes 1.36) for one run's namespace, as a cluster admin's
    policy would change the probe pod; removed afterwards. Returns `apply(run_id, cel, patch_type)`."""
    dyn = dynamic.DynamicClient(testbed_api)
    group = "admissionregistration.k8s.io/v1"
    policies = dyn.resources.get(api_version=group, kind="MutatingAdmissionPolicy")
    bindings = dyn.resources.get(api_version=group, kind="MutatingAdmissionPolicyBinding")
    made: list[str] = []

    def apply(run_id: str, expression: str, patch_type: str = "ApplyConfiguration") -> None:
        name = f"{run_id}-policy"
        policies.create(
            body={
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingAdmissionPolicy",
                "metadata": {"name": name},
                "spec": {
                    "matchConstraints": {
                        "resourceRules": [
                            {
                                "apiGroups": [""],
                                "apiVersions": ["v1"],
                                "operations": ["CREATE"],
                                "resources": ["pods"],
                            }
                        ]
                    },
                    "failurePolicy": "Fail",
                    "reinvocationPolicy": "Never",
                    "mutations": [
                        {
                            "patchType": patch_type,
                            ("applyConfiguration" if patch_type == "ApplyConfiguration" else "jsonPatch"): {
                                "expression": expression
                            },
                        }
                    ],
                },
            }
        )
        made.append(name)
        namespaces = [f"gpu-acceptance-{run_id}", testbed_namespace]
        bindings.create(
            body={
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingAdmissionPolicyBinding",
                "metadata": {"name": name},
                "spec": {
                    "policyName": name,
                    "matchResources": {
                        "namespaceSelector": {
                            "matchExpressions": [
                                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}
                            ]
                        }
                    },
                },
            }
        )
        # Policies take effect asynchronously: a dry-run pod shows when this one is active.
        probe = {
            "metadata": {"name": "policy-check"},
            "spec": {
                "containers": [{"name": "probe", "image": "x", "resources": {"limits": {"memory": "1Gi"}}}]
            },
        }
        deadline = time.monotonic() + 30
        while True:
            pod = core.create_namespaced_pod(testbed_namespace, probe, dry_run="All")
            if _mutated(pod):
                return
            assert time.monotonic() < deadline, "the admission policy did not take effect within 30s"
            time.sleep(0.2)

    yield apply
    for name in made:
        bindings.delete(name=name)
        policies.delete(name=name)


def _mutated(pod: client.V1Pod) -> bool:
    """Our policies lower the memory limit or add a deadline."""
    limits = pod.spec.containers[0].resources.limits or {}
    return limits.get("memory") != "1Gi" or pod.spec.active_deadline_seconds is not None


def test_oom_killed_probe_is_diagnosed(
    run_suite: Callable[..., Any],
    testbed: Any,
    real_node: str,
    core: client.CoreV1Api,
    admission_policy: Callable[..., None],
) -> None:
    run_id = new_run_id()
    admission_policy(
        run_id,
        'Object{spec: Object.spec{containers: [Object.spec.containers{name: "probe", '
        "resources: Object.spec.containers.resources{"
        'limits: {"memory": "12Mi"}, requests: {"memory": "12Mi"}}}]}}',
    )
    with PodRecorder(core, run_id) as pods:
        run = run_suite(*on_real_node(testbed, real_node), run_id=run_id)
    state = terminated(pods.probe_pod())
    assert state is not None and state.reason == "OOMKilled", pods.probe_pod().status
    assert run.ret == 1, run.output
    driver = run.layer("driver")
    assert driver["outcome"] == "failed"
    assert "OOMKilled" in driver["diagnosis"]["seen"], driver["diagnosis"]
    assert driver["diagnosis"]["rule"] == "probe-oom-killed", driver["diagnosis"]
    assert run.wall_s < 60, f"took {run.wall_s:.0f}s"


def test_active_deadline_exceeded_is_diagnosed(
    run_suite: Callable[..., Any],
    testbed: Any,
    real_node: str,
    core: client.CoreV1Api,
    admission_policy: Callable[..., None],
) -> None:
    run_id = new_run_id()
    # A slow init step (as a model download would be) and a shorter deadline: the kubelet ends the pod.
    admission_policy(
        run_id,
        # A list of objects as one patch value panics kube-apiserver 1.36.1 (CEL conversion): one by one.
        '[JSONPatch{op: "add", path: "/spec/activeDeadlineSeconds", value: 3}, '
        'JSONPatch{op: "add", path: "/spec/initContainers", value: []}, '
        'JSONPatch{op: "add", path: "/spec/initContainers/-", value: Object.spec.initContainers{'
        'name: "slow-init", image: object.spec.containers[0].image, '
        'command: ["python3", "-c", "import time; time.sleep(120)"]}}]',
        patch_type="JSONPatch",
    )
    with PodRecorder(core, run_id) as pods:
        run = run_suite(*on_real_node(testbed, real_node), run_id=run_id)
    pod = pods.probe_pod()
    assert (pod.status.phase, pod.status.reason) == ("Failed", "DeadlineExceeded"), pod.status
    assert run.ret == 1, run.output
    diagnosis = run.layer("scheduling")["diagnosis"]
    assert diagnosis["rule"] == "deadline-exceeded", diagnosis
    assert "DeadlineExceeded" in diagnosis["seen"] and pod.status.message in diagnosis["seen"], diagnosis
    assert run.wall_s < 60, f"took {run.wall_s:.0f}s"
