"""Layer 2, GPU allocation: the device plugin DaemonSet is Ready on every GPU node and no GPU went
missing; with --allocation dra, the DeviceClass gpu.nvidia.com exists and ResourceSlices publish GPUs
per node instead."""

import pytest

from k8s_gpu_acceptance.checks import fail
from k8s_gpu_acceptance.diagnosis import diagnose_device_plugin, diagnose_dra_allocation
from k8s_gpu_acceptance.dra import REQUIRED_ATTRIBUTES

pytestmark = [pytest.mark.gpu, pytest.mark.device_plugin, pytest.mark.ai_conformance("dra_support")]


def test_device_plugin_healthy_and_allocatable_equals_capacity(
    request, cluster_facts, allocation, gpu_settings, layer_evidence
):
    layer_evidence.metrics["allocation"] = allocation
    if allocation == "dra":
        _check_dra(request.getfixturevalue("dra_facts"), layer_evidence)
        return
    device_plugin_facts = request.getfixturevalue("device_plugin_facts")
    gpu_nodes = {n.name: (n.gpu_capacity, n.gpu_allocatable) for n in cluster_facts.gpu_nodes}
    layer_evidence.metrics.update(
        daemonsets=device_plugin_facts.daemonsets,
        ready_on=sorted(device_plugin_facts.ready_nodes),
        capacity_allocatable=gpu_nodes,
    )
    diagnosis = diagnose_device_plugin(
        device_plugin_facts.daemonsets, gpu_nodes, device_plugin_facts.ready_nodes, device_plugin_facts.error
    )
    if diagnosis is not None:
        fail(diagnosis)


def _check_dra(facts, layer_evidence):
    """DeviceClass, ResourceSlices per node, and the versions their attributes publish."""

    def values(node, key):
        return sorted({str(d.get(key)) for d in node.devices if d.get(key) is not None})

    layer_evidence.metrics.update(
        device_class="gpu.nvidia.com" if facts.device_class else None,
        devices_per_node={n.node: n.count for n in facts.nodes},
        driver_versions=sorted({v for n in facts.nodes for v in values(n, "driverVersion")}),
        cuda_driver_versions=sorted({v for n in facts.nodes for v in values(n, "cudaDriverVersion")}),
        products=sorted({v for n in facts.nodes for v in values(n, "productName")}),
    )
    layer_evidence.evidence["resource_slices"] = "\n".join(
        f"{n.node}: driver {n.driver}, {n.count} device(s) {', '.join(d['name'] for d in n.devices)}; "
        f"productName {values(n, 'productName')} driverVersion {values(n, 'driverVersion')} "
        f"cudaDriverVersion {values(n, 'cudaDriverVersion')}"
        for n in facts.nodes
    )
    diagnosis = diagnose_dra_allocation(
        error=facts.error,
        api_served=facts.api_served,
        device_class=facts.device_class is not None,
        node_devices={n.node: n.devices for n in facts.nodes},
        other_drivers=facts.other_drivers,
        required=REQUIRED_ATTRIBUTES,
    )
    if diagnosis is not None:
        fail(diagnosis)
