"""Diagnosis rules: each failure names what was seen, the cause and the fix."""

from __future__ import annotations

from k8s_gpu_acceptance.diagnosis import (
    diagnose_device_plugin,
    diagnose_gpu_count,
    diagnose_probe_layer,
    diagnose_probe_output,
    diagnose_scheduling_failure,
    untolerated_taints,
    with_gpu_holders,
)
from k8s_gpu_acceptance.document import ProbeLayer

# Scheduler messages as kube-scheduler 1.36 writes them (seen on the testbed's real scheduler).
INSUFFICIENT = (
    "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had "
    "untolerated taint {nvidia.com/gpu: true}, 1 Insufficient nvidia.com/gpu. preemption: 0/3 nodes "
    "are available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for "
    "scheduling."
)
TAINT_ONLY = "0/1 nodes are available: 1 node(s) had untolerated taint {nvidia.com/gpu: true}."


def _sched(kind, message, **kw):
    args = {"gpus": 1, "selector": {}, "runtime_class": None, "image": "img"} | kw
    return diagnose_scheduling_failure(kind, "Unschedulable", message, **args)


def test_insufficient_gpus_is_named():
    d = _sched("unschedulable", INSUFFICIENT, gpus=64)
    assert "64 free nvidia.com/gpu" in d.cause
    assert "insufficient-gpu" in d.rule


def test_insufficient_gpus_names_the_holders_and_frees_an_earlier_runs_pods():
    # As met on the 2-GPU H200 host: a --keep run's exhaustion holders kept both GPUs for the next run.
    base = _sched("unschedulable", INSUFFICIENT, gpus=2)
    holders = [
        ("gpu-acceptance-a/gpu-exh-0", "vm", 1, "20261125-232627-42b83e"),
        ("gpu-acceptance-a/gpu-exh-1", "vm", 1, "20261125-232627-42b83e"),
        ("team/train", "vm", 1, None),
    ]
    d = with_gpu_holders(base, holders, run_id="20261125-232712-9fc0cc")
    assert (
        "held by gpu-acceptance-a/gpu-exh-0 on vm (1 GPU, k8s-gpu-acceptance run 20261125-232627-42b83e)"
        in d.cause
    )
    assert "team/train on vm (1 GPU)" in d.cause
    assert d.fix.startswith(
        "free the GPUs that earlier k8s-gpu-acceptance runs still hold (kept with --keep, or still running): "
        "python -m k8s_gpu_acceptance.cleanup --run-id 20261125-232627-42b83e --delete; or lower --gpus"
    )
    only_users = with_gpu_holders(base, holders[2:], run_id="x")
    assert only_users.fix == base.fix and "team/train" in only_users.cause
    assert with_gpu_holders(base, [], run_id="x") == base
    taint = _sched("unschedulable", TAINT_ONLY)
    assert with_gpu_holders(taint, holders, run_id="x") == taint


def test_untolerated_taint_names_the_toleration_to_add():
    d = _sched("unschedulable", TAINT_ONLY)
    assert "{nvidia.com/gpu: true}" in d.cause
    assert "--toleration nvidia.com/gpu=true:NoSchedule" in d.fix


def test_missing_runtime_class_and_handler():
    d = _sched("rejected", 'pod rejected: RuntimeClass "nvidia" not found', runtime_class="nvidia")
    assert d.rule == "runtimeclass-missing"
    d = _sched(
        "sandbox",
        'failed to get sandbox runtime: no runtime for "nvidia" is configured',
        runtime_class="nvidia",
    )
    assert d.rule == "runtime-handler-missing"


def test_image_pull():
    d = _sched("image", "Back-off pulling image", image="registry.example/none:1")
    assert "registry.example/none:1" in d.cause and "--image-pull-secret" in d.fix


def test_device_plugin_rules():
    ds = [
        {
            "namespace": "kube-system",
            "name": "nvidia-device-plugin-daemonset",
            "ready": 2,
            "desired": 2,
            "image": "x",
        }
    ]
    assert diagnose_device_plugin(ds, {"n1": (1, 1), "n8": (8, 8)}, {"n1", "n8"}, None) is None
    assert diagnose_device_plugin([], {"n1": (1, 1)}, set(), None).rule == "plugin-missing"
    short = diagnose_device_plugin(ds, {"n1": (1, 1), "n8": (8, 6)}, {"n1", "n8"}, None)
    assert short.rule == "gpu-unhealthy" and "n8: capacity 8, allocatable 6 (2 missing)" in short.seen
    assert diagnose_device_plugin(ds, {"n1": (1, 1), "n9": (1, 1)}, {"n1"}, None).rule == "plugin-not-on-node"
    unready = [{**ds[0], "ready": 1}]
    assert diagnose_device_plugin(unready, {"n1": (1, 1)}, {"n1"}, None).rule == "plugin-unready"


def test_no_devices_in_pod_without_runtime_class_points_at_runtime_class():
    layer = ProbeLayer.of(
        "driver",
        {
            "status": "fail",
            "error": "no /dev/nvidia* device nodes; NVML: libnvidia-ml.so.1 not found",
            "diagnosis": None,
        },
    )
    d = diagnose_probe_layer(
        "driver", layer, target="k8s", runtime_class=None, env={"NVIDIA_VISIBLE_DEVICES": "GPU-1"}
    )
    assert d.rule == "runtime-class-missing" and "--runtime-class nvidia" in d.fix
    local = diagnose_probe_layer("driver", layer, target="local", runtime_class=None, env={})
    assert local.rule == "no-driver-local"


def test_seeing_more_gpus_than_requested_is_an_isolation_problem():
    d = diagnose_gpu_count("driver", 8, 1, "all")
    assert (
        d.rule == "sees-extra-gpus"
        and "accept-nvidia-visible-devices-envvar-when-unprivileged=false" in d.fix
    )
    # cdi-cri sets 'void': the env var selects nothing, so it is not what exposed the extra GPU.
    void = diagnose_gpu_count("driver", 2, 1, "void")
    assert void.rule == "sees-extra-gpus" and "selects none" in void.cause
    assert "overrides the device plugin" not in void.cause and "privileged" in void.cause


def test_every_untolerated_taint_gets_its_toleration():
    message = (
        "0/6 nodes are available: 1 node(s) had untolerated taint(s) {nvidia.com/gpu: true}, "
        "1 node(s) had untolerated taint(s) {testbed.k8s-gpu-acceptance.io/scenario: mig}, "
        "4 node(s) didn't match Pod's node affinity/selector."
    )
    d = _sched("unschedulable", message)
    assert "--toleration nvidia.com/gpu=true:NoSchedule" in d.fix
    assert "--toleration testbed.k8s-gpu-acceptance.io/scenario=mig:NoSchedule" in d.fix
    assert "untolerated-taint" in d.rule and "selector-mismatch" in d.rule


def test_taints_the_scheduler_did_not_name_are_found_on_the_nodes():
    """kube-scheduler 1.36 on the testbed: "4 node(s) had untolerated taint(s)." with no taint in it."""
    message = (
        "0/6 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, 4 node(s) had "
        "untolerated taint(s)."
    )
    nodes = [
        (
            "gpu-node-8",
            {"kubernetes.io/hostname": "gpu-node-8"},
            [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}],
        ),
        (
            "gpu-node-ts",
            {"kubernetes.io/hostname": "gpu-node-ts"},
            [
                {
                    "key": "testbed.k8s-gpu-acceptance.io/scenario",
                    "value": "time-slicing",
                    "effect": "NoSchedule",
                }
            ],
        ),
    ]
    found = untolerated_taints(nodes, {"kubernetes.io/hostname": "gpu-node-8"}, [])
    assert found == ["nvidia.com/gpu: true"]
    tolerated = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert untolerated_taints(nodes, {}, tolerated) == [
        "testbed.k8s-gpu-acceptance.io/scenario: time-slicing"
    ]
    d = _sched("unschedulable", message, node_taints=found)
    assert "--toleration nvidia.com/gpu=true:NoSchedule" in d.fix


# Messages as the testbed's real node (kubelet 1.36.1, containerd 2.4.2) writes them.
REAL_NO_HANDLER = (
    "Failed to create pod sandbox: rpc error: code = Unknown desc = unable to get OCI runtime for sandbox "
    '"68b5e7580a61": no runtime for "nvidia" is configured'
)
REAL_NO_IMAGE = (
    'failed to pull and unpack image "k8s-gpu-acceptance.local/not-imported:0": failed to resolve image: '
    'failed to do request: Head "https://k8s-gpu-acceptance.local/v2/not-imported/manifests/0": dial tcp: '
    "lookup k8s-gpu-acceptance.local on 10.255.255.53:53: no such host"
)


def test_real_missing_runtime_handler_message_is_named():
    d = diagnose_scheduling_failure(
        "sandbox",
        "FailedCreatePodSandBox",
        REAL_NO_HANDLER,
        gpus=1,
        selector={},
        runtime_class="nvidia",
        image="i",
    )
    assert d.rule == "runtime-handler-missing" and "'nvidia'" in d.cause


def test_real_image_pull_message_is_named():
    d = diagnose_scheduling_failure(
        "image", "ErrImagePull", REAL_NO_IMAGE, gpus=1, selector={}, runtime_class=None, image="x"
    )
    assert d.rule == "image-pull" and "no such host" in d.seen


def test_kubelet_deadline_is_its_own_rule():
    message = "Pod was active on the node longer than the specified deadline"
    d = diagnose_scheduling_failure(
        "deadline", "DeadlineExceeded", message, gpus=1, selector={}, runtime_class=None, image="x"
    )
    assert d.rule == "deadline-exceeded" and message in d.seen and "--pod-timeout" in d.fix


def test_oom_killed_probe_is_named():
    d = diagnose_probe_output("the probe container was OOMKilled (exit code 137): no output")
    assert d.rule == "probe-oom-killed" and "memory limit" in d.cause
    assert diagnose_probe_output("garbled").rule == "probe-output"
