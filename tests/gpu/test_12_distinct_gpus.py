"""Distinct GPUs: on a node with two or more unshared GPUs, one-GPU pods running at once each see exactly
one GPU, and no two see the same one.

On a one-GPU node this can never fail (there is nothing else to see), so it skips there. It needs documents
measured by the pods themselves: replayed recordings (the testbed's kwok nodes) all name the same UUID, so the
test skips on them instead of failing for the simulation's sake. Not a layer of the chain.
"""

import pytest

from k8s_gpu_acceptance.checks import fail
from k8s_gpu_acceptance.diagnosis import diagnose_distinct_gpus
from k8s_gpu_acceptance.sharing import (
    detect_sharing,
    distinct_gpu_problems,
    eligible_gpu_nodes,
    gpu_sight,
    is_replayed,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.distinct_gpus,
    pytest.mark.ai_conformance("secure_accelerator_access"),
]
MAX_PODS = 4  # enough to catch a GPU handed out twice; more only costs time on 8-GPU nodes


def test_one_gpu_pods_at_once_each_see_their_own_gpu(
    request, open_scenario, record_scenario, cluster_facts, gpu_settings
):
    pods = open_scenario(request, "distinct")
    candidates = []
    used = pods.used_gpus_by_node()
    for node in eligible_gpu_nodes(cluster_facts.nodes, gpu_settings):
        if detect_sharing(node).shared:
            continue
        free = node.gpu_allocatable - used.get(node.name, 0)
        if free >= 2:
            candidates.append((free, node.name))
    if not candidates:
        pytest.skip(
            "distinct GPUs: no GPU node with 2 or more free, unshared nvidia.com/gpu that the suite's pods "
            "may use (on a one-GPU node a pod cannot see another pod's GPU)"
        )
    free, node = max(candidates)
    n = min(free, MAX_PODS)
    names = [pods.name(f"gpu-distinct-{i}") for i in range(n)]
    for i, name in enumerate(names):
        pods.create_pod(
            pods.scenario_pod(name, scenario=f"distinct-{n}-{i}", layers="driver,nvidia_smi", node=node)
        )
    sights = {}
    for name in names:
        document = pods.collect(name, "distinct_gpus")[1]["probe"]
        if is_replayed(document, name):
            pytest.skip(
                f"distinct GPUs: the document of {name} was not measured by that pod (a replayed recording, "
                "as on the testbed's simulated nodes): its UUIDs say nothing about this node"
            )
        sights[name] = gpu_sight(document)
    problems = distinct_gpu_problems(sights)
    record_scenario(
        "distinct_gpus",
        {
            "node": node,
            "pods": {name: list(sight.uuids) for name, sight in sights.items()},
            "problems": problems,
        },
    )
    if problems:
        fail(diagnose_distinct_gpus(node, n, problems))
    print(
        f"distinct GPUs on {node}: {n} one-GPU pods at once saw "
        + ", ".join(s.uuids[0] for s in sights.values())
    )
