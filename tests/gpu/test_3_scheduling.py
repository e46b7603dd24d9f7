"""Layer 3, scheduling: the scheduler binds the probe pod to a GPU node and its container runs."""

import warnings

import pytest
from kubernetes import client

from k8s_gpu_acceptance.checks import fail
from k8s_gpu_acceptance.diagnosis import (
    diagnose_bypassed_scheduler,
    diagnose_claim_not_allocated,
    diagnose_not_a_gpu_node,
    diagnose_scheduling_failure,
    untolerated_taints,
    with_gpu_holders,
)
from k8s_gpu_acceptance.sharing import list_gpu_holders

pytestmark = [pytest.mark.gpu, pytest.mark.scheduling, pytest.mark.ai_conformance("dra_support")]


def test_probe_pod_scheduled_onto_gpu_node_and_ran(
    request, probe_pod, cluster_facts, gpu_settings, allocation, layer_evidence
):
    layer_evidence.metrics.update(
        allocation=allocation,
        pod=f"{probe_pod.namespace}/{probe_pod.name}",
        node=probe_pod.node_name,
        phase=probe_pod.phase,
        scheduled_by=probe_pod.scheduled_by,
        waited_s=probe_pod.waited_s,
        requested_gpus=gpu_settings.gpus,
    )
    layer_evidence.evidence["timeline"] = "\n".join(probe_pod.timeline)
    layer_evidence.evidence["events"] = "\n".join(probe_pod.events)
    if probe_pod.claims:
        layer_evidence.metrics["claims"] = {
            c.name: c.devices if c.allocated else None for c in probe_pod.claims
        }
    failure = probe_pod.failure
    if failure is not None and failure.kind != "container":
        fail(_with_holders(request, _why_the_pod_did_not_run(failure, gpu_settings, cluster_facts)))
    if allocation == "dra":
        allocated = sum(len(c.devices) for c in probe_pod.claims if c.allocated)
        # A template's claim is released when its pod ends; a pod that ended before its claim was read (the
        # testbed's simulated pods end within 0.2 s) cannot show its allocation any more: said, not failed.
        released = bool(probe_pod.claims) and not allocated and probe_pod.phase in ("Succeeded", "Failed")
        if released:
            layer_evidence.metrics["claims"] = "released when the pod ended (allocation not observed)"
        elif allocated < gpu_settings.gpus:
            claims = [(c.name, c.allocated, c.devices) for c in probe_pod.claims]
            fail(diagnose_claim_not_allocated(probe_pod.node_name, claims))
        if request.getfixturevalue("dra_facts").devices_on(probe_pod.node_name) < gpu_settings.gpus:
            fail(diagnose_not_a_gpu_node(probe_pod.node_name, gpu_settings.gpus))
    else:
        nodes = {n.name: n for n in cluster_facts.nodes}
        node = nodes.get(probe_pod.node_name or "")
        if node is None or node.gpu_allocatable < gpu_settings.gpus:
            fail(diagnose_not_a_gpu_node(probe_pod.node_name, gpu_settings.gpus))
    if probe_pod.scheduled_by is None:
        fail(diagnose_bypassed_scheduler(probe_pod.node_name))
    if failure is not None:
        fail(_why_the_pod_did_not_run(failure, gpu_settings, cluster_facts))


def _with_holders(request, diagnosis):
    """Not enough free GPUs: say which pods hold them (one list call, only on that failure)."""
    if "insufficient-gpu" not in diagnosis.rule.split("+"):
        return diagnosis
    connection = request.getfixturevalue("cluster_connection")
    try:
        holders = list_gpu_holders(client.CoreV1Api(connection.api))
    except Exception as exc:  # the diagnosis stands without the names
        warnings.warn(f"scheduling: could not list the pods holding GPUs: {exc}", stacklevel=1)
        return diagnosis
    run_id = request.getfixturevalue("run_state").run_id
    named = [(f"{h.namespace}/{h.name}", h.node, h.gpus, h.run_id) for h in holders]
    return with_gpu_holders(diagnosis, named, run_id)


def _why_the_pod_did_not_run(failure, settings, cluster_facts):
    nodes = [(n.name, n.labels, n.taints) for n in cluster_facts.nodes if n.is_gpu_node]
    tolerations = [t.to_k8s() for t in settings.tolerations]
    return diagnose_scheduling_failure(
        failure.kind,
        failure.reason,
        failure.message,
        gpus=settings.gpus,
        selector=settings.node_selector,
        runtime_class=settings.runtime_class,
        image=settings.image,
        node_taints=untolerated_taints(nodes, settings.node_selector, tolerations),
    )
