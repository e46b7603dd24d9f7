"""--allocation dra: the claim template, the pod's claim references, the slices' reading and `auto`."""

from __future__ import annotations

from k8s_gpu_acceptance import dra
from k8s_gpu_acceptance.diagnosis import (
    diagnose_claim_not_allocated,
    diagnose_dra_allocation,
    diagnose_scheduling_failure,
)
from k8s_gpu_acceptance.pods import build_probe_pod, classify_pod, probe_configmap_data, probe_configmap_items
from k8s_gpu_acceptance.settings import Settings
from testbed import dra as testbed_dra
from testbed.nodes import default_nodes


def _pod(settings: Settings, allocation: str) -> dict:
    items = probe_configmap_items(probe_configmap_data())
    return build_probe_pod(
        settings, "run1", "ns1", "gpu-probe-run1", "gpu-probe-run1", items, allocation=allocation
    )


def test_dra_pod_gets_its_gpus_from_the_claim_not_a_limit():
    pod = _pod(Settings(gpus=2), "dra")
    container = pod["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert "nvidia.com/gpu" not in container["resources"].get("requests", {})
    assert container["resources"]["claims"] == [{"name": "gpu"}]
    assert pod["spec"]["resourceClaims"] == [{"name": "gpu", "resourceClaimTemplateName": "gpu-probe-run1"}]
    # least privilege is unchanged by the allocation
    assert container["securityContext"]["privileged"] is False


def test_device_plugin_pod_has_the_limit_and_no_claim():
    pod = _pod(Settings(gpus=2), "device-plugin")
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "claims" not in container["resources"] and "resourceClaims" not in pod["spec"]


def test_claim_template_asks_exactly_count_devices_of_the_class_with_run_labels():
    template = dra.claim_template("run1", "ns1", 3)
    assert template["apiVersion"] == "resource.k8s.io/v1"
    assert template["metadata"]["labels"]["k8s-gpu-acceptance/run-id"] == "run1"
    (request,) = template["spec"]["spec"]["devices"]["requests"]
    assert request["exactly"] == {
        "deviceClassName": "gpu.nvidia.com",
        "allocationMode": "ExactCount",
        "count": 3,
    }


def test_slices_group_by_node_and_read_attributes_qualified_or_not():
    slices = [
        {
            "spec": {
                "driver": "gpu.nvidia.com",
                "nodeName": "n1",
                "devices": [
                    {"name": "gpu-0", "attributes": {"uuid": {"string": "GPU-a"}, "index": {"int": 0}}},
                    {"name": "gpu-1", "attributes": {"gpu.nvidia.com/driverVersion": {"version": "580.1.0"}}},
                ],
            }
        },
        {"spec": {"driver": "gpu.nvidia.com", "nodeName": "n1", "devices": [{"name": "gpu-2"}]}},
        {"spec": {"driver": "dra.example.com", "nodeName": "n2", "devices": [{"name": "x"}]}},
    ]
    nodes, others = dra.node_devices(slices)
    assert [(n.node, n.count) for n in nodes] == [("n1", 3)]
    assert nodes[0].devices[0] == {"name": "gpu-0", "uuid": "GPU-a", "index": 0}
    assert nodes[0].devices[1]["driverVersion"] == "580.1.0"
    assert others == ["dra.example.com"]


def test_auto_picks_dra_only_with_the_class_and_published_gpus():
    with_gpus = dra.DraFacts({"metadata": {}}, [dra.NodeDevices("n1", "gpu.nvidia.com", [{"name": "gpu-0"}])])
    assert dra.resolve_allocation("auto", with_gpus) == "dra"
    assert dra.resolve_allocation("auto", dra.DraFacts({"metadata": {}}, [])) == "device-plugin"
    assert dra.resolve_allocation("auto", dra.DraFacts(None, with_gpus.nodes)) == "device-plugin"
    assert dra.resolve_allocation("auto", None) == "device-plugin"
    assert dra.resolve_allocation("dra", None) == "dra"


def test_claim_status_is_read_as_allocated_devices():
    claim = {
        "metadata": {"name": "gpu-probe-x-gpu-abcde"},
        "status": {
            "allocation": {
                "devices": {"results": [{"driver": "gpu.nvidia.com", "pool": "n1", "device": "gpu-0"}]}
            },
            "reservedFor": [{"resource": "pods", "name": "gpu-probe-x"}],
        },
    }
    facts = dra.claim_facts(claim)
    assert facts.allocated and facts.devices == ["gpu.nvidia.com/n1/gpu-0"]
    assert facts.reserved_for == ["gpu-probe-x"]
    assert not dra.claim_facts({"metadata": {"name": "c"}, "status": {}}).allocated
    pod = {"status": {"resourceClaimStatuses": [{"name": "gpu", "resourceClaimName": "c1"}, {"name": "x"}]}}
    assert dra.pod_claim_names(pod) == ["c1"]


def test_failed_claim_creation_ends_the_wait_as_a_claim_failure():
    pod = {"metadata": {"name": "p"}, "spec": {}, "status": {"phase": "Pending"}}
    events = [
        {
            "type": "Warning",
            "reason": "FailedResourceClaimCreation",
            "message": 'PodResourceClaim gpu: resourceclaimtemplate.resource.k8s.io "t" not found',
        }
    ]
    verdict = classify_pod(pod, events)
    assert verdict.state == "fail" and verdict.failure is not None and verdict.failure.kind == "claim"


def test_testbed_publishes_one_slice_per_gpu_node_with_physical_gpus_and_driver_attributes():
    specs = default_nodes()
    slices = {s.name: testbed_dra.resource_slice(s) for s in specs if testbed_dra.physical_gpus(s)}
    assert "cpu-node" not in slices
    counts = {name: len(body["spec"]["devices"]) for name, body in slices.items()}
    assert counts["gpu-node-1"] == 1 and counts["gpu-node-8"] == 8
    assert counts["gpu-node-ts"] == 1  # 4 time-slicing replicas of one physical H100
    nodes, _ = dra.node_devices([body for body in slices.values()])
    eight = next(n for n in nodes if n.node == "gpu-node-8")
    assert [d["name"] for d in eight.devices] == [f"gpu-{i}" for i in range(8)]
    for attribute in dra.REQUIRED_ATTRIBUTES:
        assert all(attribute in d for d in eight.devices)
    assert len({d["uuid"] for d in eight.devices}) == 8


# --- the allocation layer's and the scheduling layer's DRA rules -------------------------------------------


def _allocation(**changes):
    facts = {
        "error": None,
        "api_served": True,
        "device_class": True,
        "node_devices": {"n1": [{"name": "gpu-0", **{a: "x" for a in dra.REQUIRED_ATTRIBUTES}}]},
        "other_drivers": [],
        "required": dra.REQUIRED_ATTRIBUTES,
    }
    facts.update(changes)
    return diagnose_dra_allocation(**facts)


def test_allocation_layer_passes_with_class_and_complete_slices():
    assert _allocation() is None


def test_allocation_layer_names_each_dra_failure_with_its_fix():
    assert _allocation(error="403 Forbidden").rule == "dra-rbac"
    assert _allocation(api_served=False).rule == "dra-api-missing"
    missing = _allocation(device_class=False)
    assert missing.rule == "dra-deviceclass-missing" and "nvidia-dra-driver-gpu" in missing.fix
    none = _allocation(node_devices={"n1": []}, other_drivers=["dra.example.com"])
    assert none.rule == "dra-no-slices" and "dra.example.com" in none.seen
    partial = _allocation(node_devices={"n1": [{"name": "gpu-0", "uuid": "GPU-1"}]})
    assert partial.rule == "dra-attributes-missing" and "driverVersion" in partial.seen


def _scheduling(kind: str, message: str):
    return diagnose_scheduling_failure(
        kind, "Unschedulable", message, gpus=9, selector={}, runtime_class=None, image="img"
    )


def test_scheduler_dra_messages_are_diagnosed_as_the_1_36_scheduler_words_them():
    # Messages as kube-scheduler v1.36.1 wrote them on the testbed (2026-11-25).
    too_many = _scheduling(
        "unschedulable",
        "0/7 nodes are available: 3 cannot allocate all claims, 4 node(s) had untolerated taint(s). "
        "still not schedulable, preemption: 0/7 nodes are available: 7 Preemption is not helpful for "
        "scheduling.",
    )
    assert too_many.rule.startswith("dra-cannot-allocate") and "9 free gpu.nvidia.com" in too_many.cause
    no_class = _scheduling(
        "unschedulable",
        "0/7 nodes are available: request gpus: device class gpu.nvidia.com does not exist. no new claims to "
        "deallocate, preemption: 0/7 nodes are available: 7 Preemption is not helpful for scheduling.",
    )
    assert no_class.rule == "dra-deviceclass-missing" and "--allocation device-plugin" in no_class.fix
    creation = _scheduling("claim", 'resourceclaimtemplate.resource.k8s.io "t" not found')
    assert creation.rule == "dra-claim-creation"


def test_claim_not_allocated_names_the_claims():
    diagnosis = diagnose_claim_not_allocated("n1", [("c1", False, [])])
    assert diagnosis.rule == "dra-claim-not-allocated" and "claim c1: not allocated" in diagnosis.seen


def test_the_second_container_of_a_dra_pod_gets_no_claim():
    from k8s_gpu_acceptance.sharing import add_shared_container

    pod = add_shared_container(_pod(Settings(), "dra"), "shared", "driver")
    first, second = pod["spec"]["containers"]
    assert first["resources"]["claims"] == [{"name": "gpu"}] and "claims" not in second["resources"]
