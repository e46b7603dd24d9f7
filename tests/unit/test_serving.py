"""The serving check's pure parts: its manifests, the readiness and scaling verdicts, the budgets, the
diagnoses. The check itself runs for real on the testbed (tests/self/test_serving_testbed.py)."""

from __future__ import annotations

from typing import Any

import pytest

from k8s_gpu_acceptance.cluster import GPU_RESOURCE
from k8s_gpu_acceptance.diagnosis import diagnose_serving_not_ready, diagnose_serving_scaling
from k8s_gpu_acceptance.loadtest import summarize
from k8s_gpu_acceptance.serving import (
    SERVER_DIR,
    load_problems,
    scaled_replicas,
    server_configmap_data,
    server_pod_verdict,
    serving_manifests,
)
from k8s_gpu_acceptance.settings import Settings, Toleration

PENDING = (
    "0/7 nodes are available: 1 Insufficient nvidia.com/gpu, 6 node(s) didn't match Pod's node "
    "affinity/selector. preemption: 0/7 nodes are available: 7 Preemption is not helpful for scheduling."
)


def manifests(**changes: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    settings = Settings(
        image="probe:1",
        runtime_class="nvidia",
        tolerations=(Toleration("nvidia.com/gpu", "NoSchedule"),),
        node_selector={"pool": "gpu"},
        model="random-gpt2-small",
        **changes,
    )
    return serving_manifests(settings, "r1", "ns", "gpt2-r1", "probe-cm", [], "server-cm", "node-a")


def test_the_deployment_is_least_privilege_pinned_and_asks_one_gpu():
    deployment, service = manifests(serving_image="serve:2")
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert labels["k8s-gpu-acceptance/run-id"] == "r1" and labels["k8s-gpu-acceptance/role"] == "serving"
    assert (
        deployment["metadata"]["labels"]
        == labels
        == service["spec"]["selector"]
        == service["metadata"]["labels"]
    )
    pod = deployment["spec"]["template"]["spec"]
    assert "activeDeadlineSeconds" not in pod and pod["restartPolicy"] == "Always"
    assert pod["runtimeClassName"] == "nvidia" and "nodeName" not in pod
    assert pod["nodeSelector"] == {"pool": "gpu", "kubernetes.io/hostname": "node-a"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and security["readOnlyRootFilesystem"] is True
    assert container["image"] == "serve:2"
    assert container["command"][:2] == ["python3", f"{SERVER_DIR}/server.py"]
    assert container["command"][2:4] == ["--model", "random-gpt2-small"]
    assert container["resources"]["limits"][GPU_RESOURCE] == "1"
    assert container["resources"]["requests"][GPU_RESOURCE] == "1"
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["serving-code"]["configMap"]["name"] == "server-cm"
    assert volumes["probe-code"]["configMap"]["name"] == "probe-cm"
    assert not any("hostPath" in v for v in pod["volumes"])  # never in the suite: testbed/serving.py only
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http"}]


def test_without_a_serving_image_the_suites_image_serves():
    deployment, _service = manifests()
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "probe:1"


def test_the_server_configmap_is_the_examples_own_file():
    data = server_configmap_data()
    assert list(data) == ["server.py"] and "def make_handler" in data["server.py"]


def pod(status: dict[str, Any], node: str | None = "node-a") -> dict[str, Any]:
    return {"metadata": {"name": "gpt2-x"}, "spec": {"nodeName": node}, "status": status}


def test_a_ready_server_is_done():
    status = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    assert server_pod_verdict(pod(status)).state == "done"


def test_a_running_server_that_is_not_ready_yet_is_waited_for():
    status = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [{"name": "server", "state": {"running": {}}, "restartCount": 0}],
    }
    verdict = server_pod_verdict(pod(status))
    assert verdict.state == "wait" and "not Ready yet" in verdict.progress


def test_a_server_that_exited_fails_at_once_with_its_exit_code():
    status = {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "server",
                "restartCount": 1,
                "state": {"waiting": {"reason": "ContainerCreating"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
            }
        ],
    }
    verdict = server_pod_verdict(pod(status))
    assert verdict.state == "fail" and verdict.failure is not None
    assert verdict.failure.kind == "container" and "exited 1 (Error)" in verdict.failure.message


def test_an_image_that_cannot_be_pulled_fails_at_once():
    status = {
        "phase": "Pending",
        "containerStatuses": [
            {"name": "server", "state": {"waiting": {"reason": "ErrImagePull", "message": "x"}}}
        ],
    }
    verdict = server_pod_verdict(pod(status))
    assert verdict.state == "fail" and verdict.failure is not None and verdict.failure.kind == "image"


def test_scaled_replicas_are_bound_pending_or_undecided():
    unschedulable = {
        "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": PENDING}
        ]
    }
    pods = [
        {"metadata": {"name": "a"}, "spec": {"nodeName": "node-a"}, "status": {}},
        {"metadata": {"name": "b"}, "spec": {}, "status": unschedulable},
        {"metadata": {"name": "c"}, "spec": {}, "status": {}},
        {"metadata": {"name": "d", "deletionTimestamp": "now"}, "spec": {}, "status": unschedulable},
    ]
    scaled = scaled_replicas(pods)
    assert scaled.bound == {"a": "node-a"} and scaled.pending == {"b": PENDING} and scaled.undecided == ["c"]


def levels(p50_ms: float, errors: int = 0) -> list[Any]:
    ok = [(p50_ms, 8)] * 4
    return [summarize(1, 1.0, ok + ["HTTP 503"] * errors), summarize(2, 1.0, ok)]


def test_within_budget_there_is_no_problem():
    assert load_problems(levels(40.0), max_p50_ms=50.0, max_error_rate=0.0) == []


def test_the_p50_budget_is_judged_at_the_lowest_concurrency():
    (problem,) = load_problems(levels(60.0), max_p50_ms=50.0, max_error_rate=0.0)
    assert problem.startswith("p50 60 ms at 1 client(s) > budget 50 ms")


def test_failed_requests_over_the_error_budget_are_counted_by_kind():
    (problem,) = load_problems(levels(40.0, errors=2), max_p50_ms=50.0, max_error_rate=0.1)
    assert problem.startswith("2 of 10 requests failed (20.0% > budget 10.0%") and "HTTP 503 x2" in problem
    assert load_problems(levels(40.0, errors=1), max_p50_ms=50.0, max_error_rate=0.12) == []  # 1 of 9


def test_no_successful_request_is_a_problem_of_its_own():
    only_errors = [summarize(1, 1.0, ["timeout"])]
    assert "no request succeeded at 1 client(s)" in load_problems(only_errors, 50.0, 1.0)[0]


def test_one_pending_replica_for_gpus_passes():
    assert diagnose_serving_scaling("node-a", 2, 1, [PENDING]) is None


@pytest.mark.parametrize(
    ("bound", "pending", "undecided", "rule"),
    [
        (2, [], 0, "serving-overcommit"),
        (1, [PENDING, PENDING], 0, "serving-pending-count"),
        (1, ["0/1 nodes are available: 1 Insufficient cpu."], 0, "serving-pending-other"),
        (1, [], 1, "serving-no-verdict"),
    ],
)
def test_anything_but_one_replica_pending_for_gpus_fails_with_its_rule(bound, pending, undecided, rule):
    diagnosis = diagnose_serving_scaling("node-a", 2, bound, pending, undecided)
    assert diagnosis is not None and diagnosis.rule == rule and "node-a" in diagnosis.seen


def test_a_server_that_exited_is_its_own_diagnosis_and_a_pull_failure_the_schedulings():
    exited = diagnose_serving_not_ready(
        "Deployment ns/gpt2", "container", "Error", "the server exited 1 (Error); ModuleNotFoundError: torch"
    )
    assert exited.rule == "serving-server-exited" and "--serving-image" in exited.fix
    pull = diagnose_serving_not_ready("Deployment ns/gpt2", "image", "ErrImagePull", "not found")
    assert pull.rule == "serving-image-pull" and pull.layer == "serving"
