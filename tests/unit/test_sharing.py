"""Pure logic of the sharing/isolation/exhaustion scenarios, on real recordings and recorded API shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gpu_probe.document import parse_document

from k8s_gpu_acceptance.cluster import NodeFacts
from k8s_gpu_acceptance.diagnosis import diagnose_exhaustion, diagnose_isolation_leak
from k8s_gpu_acceptance.settings import Settings, Toleration
from k8s_gpu_acceptance.sharing import (
    SCENARIO_ANNOTATION,
    START_AT_ENV,
    GpuSight,
    PodState,
    add_shared_container,
    common_window_s,
    detect_sharing,
    distinct_gpu_problems,
    eligible_gpu_nodes,
    extra_verdict,
    gpu_holders,
    gpu_request,
    gpu_sight,
    holder_pod,
    holder_verdict,
    is_replayed,
    mig_memory_ok,
    mig_resources,
    parse_mig_profile,
    privileged_gpu_pods,
    run_window,
    scenario_pod,
    shares,
    tolerated,
)

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"
H100_GFD = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "1"}


def _doc(name: str) -> dict:
    return parse_document((RECORDINGS / f"{name}.log").read_text())


def _node(name="n", alloc=1, labels=None, taints=(), ready=True) -> NodeFacts:
    return NodeFacts(name, ready, False, alloc, alloc, {**H100_GFD, **(labels or {})}, list(taints))


# --- detection ---


def test_plain_h100_node_is_not_shared():
    config = detect_sharing(
        _node(labels={"nvidia.com/gpu.replicas": "1", "nvidia.com/gpu.sharing-strategy": "none"})
    )
    assert (config.strategy, config.replicas, config.evidence) == ("none", 1, ())


def test_time_slicing_from_gfd_labels():
    labels = {
        "nvidia.com/gpu.sharing-strategy": "time-slicing",
        "nvidia.com/gpu.replicas": "4",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-SHARED",
    }
    config = detect_sharing(_node(alloc=4, labels=labels))
    assert config.strategy == "time-slicing" and config.replicas == 4 and config.physical == 1
    assert len(config.evidence) == 4  # strategy, replicas, -SHARED, allocatable > count


def test_time_slicing_inferred_from_allocatable_alone():
    config = detect_sharing(_node(alloc=3))
    assert config.strategy == "time-slicing" and config.replicas == 3
    assert config.evidence == ("allocatable nvidia.com/gpu 3 > nvidia.com/gpu.count 1",)


def test_mps_strategy_is_kept():
    config = detect_sharing(
        _node(alloc=2, labels={"nvidia.com/gpu.sharing-strategy": "mps", "nvidia.com/gpu.replicas": "2"})
    )
    assert config.strategy == "mps" and config.replicas == 2


@pytest.mark.parametrize(
    ("resource", "slices", "gb"),
    [
        ("nvidia.com/mig-1g.10gb", 1, 10.0),
        ("nvidia.com/mig-3g.40gb", 3, 40.0),
        ("nvidia.com/mig-1g.5gb+me", 1, 5.0),
        ("nvidia.com/mig-1c.2g.20gb", 2, 20.0),
    ],
)
def test_mig_profiles_parse(resource, slices, gb):
    profile = parse_mig_profile(resource)
    assert profile is not None and (profile.slices, profile.memory_gb) == (slices, gb)


def test_mig_garbage_and_resources():
    assert parse_mig_profile("nvidia.com/gpu") is None
    assert mig_resources({"nvidia.com/mig-1g.10gb": "7", "nvidia.com/mig-2g.20gb": "0", "cpu": "8"}) == {
        "nvidia.com/mig-1g.10gb": 7
    }


def test_mig_memory_tolerance():
    profile = parse_mig_profile("nvidia.com/mig-1g.10gb")
    assert profile is not None
    assert mig_memory_ok(profile, 9984)[0]  # what an H100 1g.10gb slice reports
    ok, ratio = mig_memory_ok(profile, 81559)  # a whole H100
    assert not ok and ratio > 8


# --- scheduling eligibility ---

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
SCENARIO_TAINT = {
    "key": "testbed.k8s-gpu-acceptance.io/scenario",
    "value": "time-slicing",
    "effect": "NoSchedule",
}


def test_tolerations_match_key_effect_and_value():
    default = (Toleration("nvidia.com/gpu", "NoSchedule"),)
    assert tolerated([GPU_TAINT], default)
    assert not tolerated([SCENARIO_TAINT], default)
    assert tolerated([SCENARIO_TAINT], (Toleration(SCENARIO_TAINT["key"], "NoSchedule", "time-slicing"),))
    assert not tolerated([SCENARIO_TAINT], (Toleration(SCENARIO_TAINT["key"], "NoSchedule", "mig"),))
    assert tolerated([{"key": "x", "effect": "PreferNoSchedule"}], ())


def test_eligible_nodes_follow_selector_taints_and_readiness():
    nodes = [
        _node("gpu-node-1"),
        _node("gpu-node-8", 8, taints=[GPU_TAINT]),
        _node("gpu-node-ts", 4, taints=[SCENARIO_TAINT]),
        _node("gpu-down", ready=False),
        NodeFacts("cpu-node", True, False, 0, 0, {}, []),
    ]
    assert [n.name for n in eligible_gpu_nodes(nodes, Settings())] == ["gpu-node-1", "gpu-node-8"]
    pinned = Settings(node_selector={"nvidia.com/gpu.count": "1"}, tolerations=())
    assert [n.name for n in eligible_gpu_nodes(nodes, pinned)] == ["gpu-node-1"]


def test_gpu_request_counts_like_the_scheduler():
    pod = {
        "spec": {
            "containers": [
                {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
                {"resources": {"requests": {"nvidia.com/gpu": "2"}}},
            ],
            "initContainers": [{"resources": {"limits": {"nvidia.com/gpu": "4"}}}],
        }
    }
    assert gpu_request(pod) == 4
    assert gpu_request({"spec": {"containers": [{}]}}) == 0


def _pod(name, node, gpus, phase="Running", run_id=None):
    labels = {"k8s-gpu-acceptance/run-id": run_id} if run_id else {}
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    return {
        "metadata": {"namespace": "ns", "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"resources": {"limits": limits}}]},
        "status": {"phase": phase},
    }


def test_gpu_holders_are_bound_unfinished_pods_with_a_gpu_request():
    pods = [
        _pod("kept-holder", "vm", 1, run_id="20261125-232627-42b83e"),
        _pod("user-job", "vm", 1),
        _pod("done", "vm", 1, phase="Succeeded"),
        _pod("cpu-only", "vm", 0),
        _pod("pending", None, 1, phase="Pending"),
        _pod("elsewhere", "other", 2),
    ]
    holders = gpu_holders(pods, node="vm")
    assert [(h.name, h.gpus, h.run_id) for h in holders] == [
        ("kept-holder", 1, "20261125-232627-42b83e"),
        ("user-job", 1, None),
    ]
    assert sum(h.gpus for h in gpu_holders(pods)) == 4


def test_privileged_gpu_pods_are_listed_only_when_live_and_requesting():
    def pod(name, gpus, privileged, phase="Running"):
        res = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
        return {
            "metadata": {"namespace": "ns", "name": name},
            "spec": {
                "containers": [{"name": "c", "resources": res, "securityContext": {"privileged": privileged}}]
            },
            "status": {"phase": phase},
        }

    pods = [pod("a", 1, True), pod("b", 1, False), pod("c", 0, True), pod("d", 1, True, "Succeeded")]
    assert privileged_gpu_pods(pods) == ["ns/a (c)"]


# --- what the probe saw (real recordings) ---


def test_h100_recording_sees_its_gpu():
    sight = gpu_sight(_doc("h100"))
    assert sight.sees_gpu and sight.uuids == ("GPU-f26e483c-f2d3-e076-3a92-ed1896740be4",)
    assert sight.torch_devices == 1 and "/dev/nvidia0" in sight.device_nodes


def test_cpu_recording_sees_no_gpu():
    sight = gpu_sight(_doc("cpu"))
    assert not sight.sees_gpu and sight.describe().startswith("no GPU")


def test_a_gpu_readable_only_in_proc_is_not_access():
    # Recorded on the H100 cluster (2026-11-25): a pod without a GPU request has no device node and no NVML,
    # but the host's /proc/driver/nvidia/gpus names the H100; the driver layer lists it from there.
    doc = _doc("h100-cluster-no-request")
    assert doc["layers"]["driver"]["metrics"]["nvml_available"] is False
    assert doc["layers"]["driver"]["metrics"]["gpus"][0]["uuid"].startswith("GPU-")
    sight = gpu_sight(doc)
    assert not sight.sees_gpu, sight.describe()


def test_recordings_are_replayed_not_measured_by_the_pod():
    assert is_replayed(_doc("h100"), "gpu-mig-x")
    assert not is_replayed({"identity": {"pod_name": "gpu-mig-x"}}, "gpu-mig-x")


@pytest.mark.parametrize("name", ["isolation-void", "isolation-nocuda", "mps"])
def test_real_scenario_recordings_parse(name):
    path = RECORDINGS / f"{name}.log"
    if not path.is_file():
        pytest.skip(f"recording {path.name} not yet recorded (tests/data/recordings/record_sharing.sh)")
    sight = gpu_sight(_doc(name))
    assert sight.describe()


# --- time-slicing arithmetic ---


def test_run_windows_overlap_with_one_second_resolution():
    a = {"started_at": "2026-11-22T10:00:00Z", "duration_s": 2.0}
    b = {"started_at": "2026-11-22T10:00:01Z", "duration_s": 2.0}
    c = {"started_at": "2026-11-22T10:00:10Z", "duration_s": 2.0}
    assert common_window_s([run_window(a), run_window(b)]) == pytest.approx(2.0)
    assert common_window_s([run_window(a), run_window(c)]) < 0


def test_shares_against_one_over_n_per_uuid():
    got = shares(
        800.0,
        [("p0", "GPU-a", 200.0), ("p1", "GPU-a", 210.0), ("p2", "GPU-a", 190.0), ("p3", "GPU-a", 790.0)],
    )
    assert [s.ok for s in got] == [True, True, True, False]
    assert got[0].expected == 0.25 and got[3].share == pytest.approx(0.988)
    alone = shares(800.0, [("p0", "GPU-a", 400.0), ("p1", "GPU-b", 790.0)])
    assert [s.expected for s in alone] == [1.0, 1.0] and [s.ok for s in alone] == [True, True]


# --- pods ---

ITEMS = [{"key": "__init__.py", "path": "__init__.py"}]


def test_scenario_pod_without_gpu_and_with_env():
    pod = scenario_pod(
        Settings(),
        "r1",
        "ns",
        "gpu-iso",
        "cm",
        ITEMS,
        scenario="isolation-visible-all",
        layers="driver",
        gpus=0,
        node="gpu-node-1",
        env={"NVIDIA_VISIBLE_DEVICES": "all"},
    )
    container = pod["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "gpu-node-1"}
    assert "nodeName" not in pod["spec"]
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"} in container["env"]
    assert pod["metadata"]["annotations"][SCENARIO_ANNOTATION] == "isolation-visible-all"
    assert pod["metadata"]["labels"]["k8s-gpu-acceptance/role"] == "probe"
    assert container["securityContext"]["privileged"] is False
    assert container["command"][-2:] == ["--layers", "driver"]


def test_scenario_pod_mig_resource_and_synced_start():
    pod = scenario_pod(
        Settings(),
        "r1",
        "ns",
        "p",
        "cm",
        ITEMS,
        scenario="x",
        layers="driver,gpu_perf",
        resource="nvidia.com/mig-1g.10gb",
        synced_start=1700000000.5,
    )
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"memory": "8Gi", "nvidia.com/mig-1g.10gb": "1"}
    assert container["command"][:2] == ["python3", "-c"] and "runpy" in container["command"][2]
    assert {"name": START_AT_ENV, "value": "1700000000.5"} in container["env"]


def test_multi_container_pod_second_container_requests_nothing():
    pod = add_shared_container(
        scenario_pod(Settings(), "r1", "ns", "p", "cm", ITEMS, scenario="m", layers="driver"),
        "shared",
        "driver",
    )
    first, second = pod["spec"]["containers"]
    assert first["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in json.dumps(second["resources"]) and second["name"] == "shared"


def test_holder_pod_is_least_privilege_and_pinned():
    pod = holder_pod(
        Settings(tolerations=(Toleration("nvidia.com/gpu", "NoSchedule"),)),
        "r1",
        "ns",
        "h",
        "cm",
        "gpu-node-8",
        300,
    )
    spec = pod["spec"]
    assert pod["metadata"]["labels"]["k8s-gpu-acceptance/role"] == "holder"
    assert spec["nodeSelector"] == {"kubernetes.io/hostname": "gpu-node-8"} and "nodeName" not in spec
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    container = spec["containers"][0]
    assert container["command"] == ["python3", "-c", "import time; time.sleep(300)"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "volumes" not in spec


# --- verdicts and diagnoses ---

UNSCHED = {
    "spec": {},
    "status": {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/5 nodes are available: 1 Insufficient nvidia.com/gpu, 4 node(s) didn't match "
                "Pod's node affinity/selector.",
            }
        ],
    },
}


def test_extra_and_holder_verdicts():
    assert extra_verdict(PodState("x", UNSCHED)).startswith("unschedulable: 0/5 nodes")
    assert (
        extra_verdict(PodState("x", {"spec": {"nodeName": "gpu-node-1"}, "status": {}}))
        == "scheduled: gpu-node-1"
    )
    assert extra_verdict(PodState("x", {"spec": {}, "status": {"phase": "Pending"}})) is None
    assert (
        holder_verdict(PodState("h", {"spec": {"nodeName": "n"}, "status": {"phase": "Running"}}))
        == "running"
    )
    pulling = {
        "spec": {"nodeName": "n"},
        "status": {
            "phase": "Pending",
            "containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull", "message": "m"}}}],
        },
    }
    assert holder_verdict(PodState("h", pulling)) == "image: ErrImagePull: m"
    assert holder_verdict(PodState("h", UNSCHED)).startswith("unschedulable")


def test_exhaustion_diagnoses():
    extra = "unschedulable: " + UNSCHED["status"]["conditions"][0]["message"]
    assert diagnose_exhaustion("n", 8, 0, 8, 8, extra) is None
    assert diagnose_exhaustion("n", 8, 0, 8, 8, "scheduled: n").rule == "exhaustion-overcommit"
    assert diagnose_exhaustion("n", 8, 0, 5, 8, "image: ErrImagePull").rule == "exhaustion-holders"
    assert (
        diagnose_exhaustion("n", 8, 0, 8, 8, "unschedulable: 1 Insufficient cpu").rule
        == "exhaustion-other-limit"
    )
    assert diagnose_exhaustion("n", 8, 0, 8, 8, "timeout").rule == "exhaustion-no-verdict"


def test_isolation_leak_names_both_fixes():
    d = diagnose_isolation_leak("visible-all", "NVML 1", {"NVIDIA_VISIBLE_DEVICES": "all"})
    assert (
        "volume-mounts" in d.fix and "accept-nvidia-visible-devices-envvar-when-unprivileged = false" in d.fix
    )
    assert "--allow-envvar-sharing" in d.fix and "'all'" in d.cause


def test_naming_another_gpu_uuid_is_called_the_workflow_sharing_trick_and_a_security_finding():
    d = diagnose_isolation_leak("visible-uuid", "NVML 1", {"NVIDIA_VISIBLE_DEVICES": "GPU-1"})
    assert "GPU-sharing trick of Argo/Metaflow workflows" in d.cause and "security finding" in d.cause
    assert "trick" not in diagnose_isolation_leak("visible-all", "NVML 1", {}).cause


# --- distinct GPUs on a multi-GPU node (synthetic sights: no 2-GPU recording exists yet) ---


def _sight(*uuids: str, smi: tuple[str, ...] | None = None, nodes: int | None = None) -> GpuSight:
    count = len(uuids) if nodes is None else nodes
    return GpuSight(
        uuids, uuids if smi is None else smi, len(uuids), tuple(f"/dev/nvidia{i}" for i in range(count))
    )


def test_one_gpu_pods_with_their_own_gpus_pass():
    assert distinct_gpu_problems({"a": _sight("GPU-1"), "b": _sight("GPU-2")}) == []


def test_a_gpu_handed_out_twice_is_named_with_both_pods():
    problems = distinct_gpu_problems({"a": _sight("GPU-1"), "b": _sight("GPU-1")})
    assert problems == ["GPU-1 is seen by a and b"]


def test_a_pod_seeing_every_gpu_or_none_fails():
    problems = distinct_gpu_problems({"a": _sight("GPU-1", "GPU-2"), "b": _sight()})
    assert problems[0].startswith("a sees NVML 2, nvidia-smi 2") and "exactly 1 GPU expected" in problems[0]
    assert any(p.startswith("a has device nodes of 2 GPUs") for p in problems)
    assert any(p.startswith("b sees no GPU") for p in problems)
    assert "GPU-1 is seen by" not in " ".join(problems)  # one pod seeing a GPU is not a duplicate


def test_without_nvml_in_the_image_nvidia_smi_decides():
    # As the small probe image (no nvidia-ml-py) reported on the 2-GPU H200 node: NVML "0" was not measured.
    def smi_only(uuid: str, minor: int) -> GpuSight:
        return GpuSight((), (uuid,), 0, (f"/dev/nvidia{minor}",), nvml_measured=False)

    assert distinct_gpu_problems({"a": smi_only("GPU-1", 0), "b": smi_only("GPU-2", 1)}) == []
    problems = distinct_gpu_problems({"a": smi_only("GPU-1", 0), "b": smi_only("GPU-1", 1)})
    assert problems == ["GPU-1 is seen by a and b"]
    assert "NVML not measured" in smi_only("GPU-1", 0).describe()


def test_nvml_and_nvidia_smi_must_agree_in_a_pod():
    problems = distinct_gpu_problems({"a": _sight("GPU-1", smi=("GPU-9",)), "b": _sight("GPU-2")})
    assert problems == ["a: NVML sees GPU-1, nvidia-smi GPU-9"]
