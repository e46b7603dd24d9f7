"""The probe pod: its spec (least privilege, options applied) and the watch's reading of pod states."""

from __future__ import annotations

from pathlib import Path

import pytest

from k8s_gpu_acceptance.pods import (
    PodRun,
    build_probe_pod,
    classify_pod,
    probe_configmap_data,
    probe_configmap_items,
)
from k8s_gpu_acceptance.probe import probe_from_pod
from k8s_gpu_acceptance.settings import Settings, Toleration


def _pod(settings: Settings) -> dict:
    data = probe_configmap_data()
    return build_probe_pod(
        settings, "run1", "ns1", "gpu-probe-run1", "gpu-probe-run1", probe_configmap_items(data)
    )


def test_probe_pod_is_least_privilege_and_requests_gpus():
    pod = _pod(
        Settings(
            gpus=2,
            runtime_class="nvidia",
            node_selector={"a": "b"},
            tolerations=(Toleration("nvidia.com/gpu", "NoSchedule"),),
            image_pull_secret="regcred",
            pod_annotations={"x/y": "z"},
        )
    )
    spec = pod["spec"]
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["securityContext"]["privileged"] is False
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"a": "b"}
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["metadata"]["labels"]["k8s-gpu-acceptance/run-id"] == "run1"
    assert pod["metadata"]["annotations"] == {"x/y": "z"}
    assert spec["activeDeadlineSeconds"] == 300


def test_probe_modules_travel_in_the_configmap_at_their_paths():
    data = probe_configmap_data()
    assert "__main__.py" in data and "document.py" in data
    assert all("/" not in key for key in data)
    items = probe_configmap_items(data)
    assert {"key": "__main__.py", "path": "__main__.py"} in items


def _status(**status) -> dict:
    return {"spec": {"nodeName": status.pop("node", None)}, "status": status}


def test_unschedulable_fails_fast_with_the_scheduler_message():
    message = "0/3 nodes are available: 1 Insufficient nvidia.com/gpu, 2 node(s) had untolerated taint."
    pod = _status(
        phase="Pending",
        conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        ],
    )
    verdict = classify_pod(pod)
    assert verdict.state == "fail"
    assert verdict.failure is not None and verdict.failure.kind == "unschedulable"
    assert "Insufficient nvidia.com/gpu" in verdict.failure.message


def test_unschedulable_waits_while_the_autoscaler_adds_a_node():
    pod = _status(
        phase="Pending",
        conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1"}],
    )
    verdict = classify_pod(pod, [{"reason": "TriggeredScaleUp", "type": "Normal"}])
    assert verdict.state == "wait"


def test_image_pull_backoff_fails_fast():
    pod = _status(
        phase="Pending",
        node="n1",
        containerStatuses=[
            {"name": "probe", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}
        ],
    )
    verdict = classify_pod(pod)
    assert verdict.state == "fail" and verdict.failure is not None
    assert (verdict.failure.kind, verdict.failure.reason) == ("image", "ImagePullBackOff")


def test_sandbox_failure_from_events_fails_fast():
    pod = _status(phase="Pending", node="n1")
    event = {
        "type": "Warning",
        "reason": "FailedCreatePodSandBox",
        "message": 'no runtime for "nvidia" is configured',
    }
    verdict = classify_pod(pod, [event])
    assert verdict.state == "fail" and verdict.failure is not None and verdict.failure.kind == "sandbox"


def test_progress_then_done():
    assert classify_pod(_status(phase="Pending")).progress == "Pending: waiting for the scheduler"
    running = _status(phase="Running", node="n1", containerStatuses=[{"state": {"running": {}}}])
    assert classify_pod(running).progress == "Running on n1"
    assert classify_pod(_status(phase="Succeeded", node="n1")).state == "done"
    assert classify_pod(_status(phase="Failed", node="n1")).state == "done"


def _ended(phase: str, code: int, reason: str) -> dict:
    terminated = {"exitCode": code, "reason": reason}
    return _status(
        phase=phase, node="vm", containerStatuses=[{"name": "probe", "state": {"terminated": terminated}}]
    )


def test_a_finished_pod_says_how_its_container_ended_never_pending():
    # As the H100 cluster run of 2026-11-25 saw it: the container ended while the phase still said Running;
    # the progress line read "Pending on vm (+15.4s)" after "Running on vm".
    ended = classify_pod(_ended("Running", 0, "Completed"))
    assert (ended.state, ended.progress) == ("wait", "probe exited 0 (Completed) on vm")
    done = classify_pod(_ended("Succeeded", 0, "Completed"))
    assert (done.state, done.progress) == ("done", "Succeeded on vm: probe exited 0 (Completed)")
    failed = classify_pod(_ended("Failed", 137, "OOMKilled"))
    assert (failed.state, failed.progress) == ("done", "Failed on vm: probe exited 137 (OOMKilled)")


def test_deadline_exceeded_by_the_kubelet_fails_with_its_message():
    # As the real kubelet 1.36 leaves a pod past its activeDeadlineSeconds (seen on the testbed's real node).
    message = "Pod was active on the node longer than the specified deadline"
    pod = _status(phase="Failed", node="n1", reason="DeadlineExceeded", message=message)
    verdict = classify_pod(pod)
    assert verdict.state == "fail" and verdict.failure is not None
    assert (verdict.failure.kind, verdict.failure.reason, verdict.failure.message) == (
        "deadline",
        "DeadlineExceeded",
        message,
    )


def test_oom_killed_probe_container_is_named_in_the_error():
    pod = PodRun("ns", "p", node_name="n1", phase="Failed", log="", exit_code=137, termination="OOMKilled")
    run = probe_from_pod(pod)
    assert run.document is None and run.error is not None
    assert run.error.startswith("the probe container was OOMKilled (exit code 137)")


def test_a_checkout_file_missing_everywhere_names_where_it_looked_and_the_fix(tmp_path, monkeypatch):
    """Installed from a wheel and run outside the checkout, the probe pod's template is not there: the error
    says where it looked and what to do, not a bare FileNotFoundError of a relative path."""
    from k8s_gpu_acceptance.pods import checkout_file

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as raised:
        checkout_file(Path("manifests") / "no-such.yaml")
    assert str(tmp_path / "manifests" / "no-such.yaml") in str(raised.value)
    assert "run the suite from its checkout" in str(raised.value)
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "no-such.yaml").write_text("kind: Pod\n")
    assert checkout_file(Path("manifests") / "no-such.yaml") == tmp_path / "manifests" / "no-such.yaml"
