"""Layer 2, device plugin: its DaemonSet is Ready on every GPU node and no GPU went missing."""

import pytest

from k8s_gpu_acceptance.checks import fail
from k8s_gpu_acceptance.diagnosis import diagnose_device_plugin

pytestmark = [pytest.mark.gpu, pytest.mark.device_plugin]


def test_device_plugin_healthy_and_allocatable_equals_capacity(
    cluster_facts, device_plugin_facts, layer_evidence
):
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
