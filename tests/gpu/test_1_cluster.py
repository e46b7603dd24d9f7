"""Layer 1, cluster: the API server answers, nodes are Ready, and GPU nodes advertise nvidia.com/gpu."""

import pytest

from k8s_gpu_acceptance.checks import fail
from k8s_gpu_acceptance.diagnosis import diagnose_no_gpu_nodes, diagnose_no_ready_nodes, diagnose_unreachable

pytestmark = [pytest.mark.gpu, pytest.mark.cluster]


def test_cluster_reachable_and_gpu_nodes_advertise_gpus(request, cluster_facts, allocation, layer_evidence):
    layer_evidence.metrics.update(server=cluster_facts.server, version=cluster_facts.version)
    if not cluster_facts.reachable:
        fail(diagnose_unreachable(cluster_facts.error or "no answer", cluster_facts.unreachable_kind))
    ready = [n for n in cluster_facts.nodes if n.ready]
    layer_evidence.metrics.update(
        nodes=len(cluster_facts.nodes),
        ready_nodes=len(ready),
        gpu_nodes=[n.name for n in cluster_facts.gpu_nodes],
    )
    layer_evidence.evidence["nodes"] = "\n".join(
        f"{n.name}: ready={n.ready} nvidia.com/gpu capacity={n.gpu_capacity} allocatable={n.gpu_allocatable} "
        f"taints={[t['key'] + ':' + str(t['effect']) for t in n.taints]}"
        for n in cluster_facts.nodes
    )
    if not ready:
        fail(diagnose_no_ready_nodes(len(cluster_facts.nodes)))
    advertising = [n for n in cluster_facts.nodes if n.gpu_capacity > 0]
    if allocation == "dra":  # GPUs are published as ResourceSlices, not as an extended resource
        publishing = {n.node for n in request.getfixturevalue("dra_facts").nodes if n.count}
        advertising = [n for n in cluster_facts.nodes if n.name in publishing]
    if not advertising:
        fail(diagnose_no_gpu_nodes(len(cluster_facts.nodes), len(ready)))
