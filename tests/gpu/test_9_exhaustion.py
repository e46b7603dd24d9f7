"""Exhaustion: fill a GPU node's free nvidia.com/gpu with holder pods; one more must stay Pending.

Not a layer of the chain: it runs after the layers, through the real scheduler, and reports per node how
many one-GPU pods fit. Holders are least-privilege `python3 sleep` pods pinned by nodeSelector (never
nodeName, which would bypass the scheduler's GPU accounting); all are deleted after the test.
"""

import pytest

from k8s_gpu_acceptance.checks import fail
from k8s_gpu_acceptance.diagnosis import diagnose_exhaustion
from k8s_gpu_acceptance.sharing import (
    MAX_EXHAUSTION_NODES,
    MAX_HOLDERS_PER_NODE,
    eligible_gpu_nodes,
    extra_verdict,
    holder_verdict,
)

pytestmark = [pytest.mark.gpu, pytest.mark.exhaustion]
EXTRA_VERDICT_S = 30  # the scheduler answers in about a second; this is the "diagnosed in seconds" bound


def test_one_gpu_pod_more_than_the_node_has_stays_pending(
    request, open_scenario, record_scenario, cluster_facts, gpu_settings
):
    nodes = eligible_gpu_nodes(cluster_facts.nodes, gpu_settings)
    if not nodes:
        gpu = ", ".join(f"{n.name} (taints {n.taints})" for n in cluster_facts.gpu_nodes) or "none"
        pytest.skip(
            "exhaustion: no Ready GPU node that the suite's pods may land on (nodeSelector "
            f"{gpu_settings.node_selector}, tolerations {[t.to_k8s() for t in gpu_settings.tolerations]}); "
            f"GPU nodes: {gpu}"
        )
    pods = open_scenario(request, "exh")
    hold_s = gpu_settings.pod_timeout + 2 * EXTRA_VERDICT_S
    report, problems = {}, []
    for index, node in enumerate(nodes[:MAX_EXHAUSTION_NODES]):
        used = pods.used_gpus(node.name)
        free = node.gpu_allocatable - used
        if free > MAX_HOLDERS_PER_NODE:
            report[node.name] = {"allocatable": node.gpu_allocatable, "skipped": f"{free} free GPUs > bound"}
            continue
        names = [pods.name(f"gpu-holder-{index}-{i}") for i in range(free)]
        for name in names:
            pods.create_pod(pods.holder_pod(name, node.name, hold_s))
        held = pods.wait_pods(names, holder_verdict, gpu_settings.pod_timeout) if names else {}
        fit = sum(1 for _state, verdict in held.values() if verdict == "running")
        not_running = sorted({verdict for _state, verdict in held.values() if verdict != "running"})
        entry = {"allocatable": node.gpu_allocatable, "held_by_others": used, "holders": free, "fit": fit}
        if fit < free:
            extra = "; ".join(not_running)
        else:
            extra_name = pods.name(f"gpu-extra-{index}")
            pods.create_pod(pods.holder_pod(extra_name, node.name, hold_s))
            extra = pods.wait_pods([extra_name], extra_verdict, EXTRA_VERDICT_S)[extra_name][1]
        entry["extra_pod"] = extra
        report[node.name] = entry
        diagnosis = diagnose_exhaustion(node.name, node.gpu_allocatable, used, fit, free, extra)
        if diagnosis is not None:
            problems.append(diagnosis)
    record_scenario("exhaustion", {"gpu_pods_fit_per_node": report})
    summary = ", ".join(
        f"{name}: {e.get('fit', '-')} GPU pod(s) fit of allocatable {e['allocatable']}"
        for name, e in report.items()
    )
    request.node.user_properties.append(("exhaustion.summary", summary))
    if problems:
        fail(problems[0])
    print(f"exhaustion: {summary}")
