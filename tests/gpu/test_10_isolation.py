"""Isolation: a pod on a GPU node that requests no GPU must see none, even when it names GPUs in its env.

Not a layer of the chain. Three pods run the probe (driver, nvidia_smi, torch_cuda) on a GPU node without an
nvidia.com/gpu request: plain, with NVIDIA_VISIBLE_DEVICES=all, and with the UUID the main probe pod saw.
Seeing a GPU is a finding (the NVIDIA_VISIBLE_DEVICES leak), or, with --allow-envvar-sharing, a recorded
deliberate sharing mode. Also: no running GPU pod may be privileged.
"""

import warnings

import pytest
from kubernetes import client

from k8s_gpu_acceptance.checks import fail
from k8s_gpu_acceptance.cluster import REQUEST_TIMEOUT
from k8s_gpu_acceptance.diagnosis import (
    diagnose_isolation_leak,
    diagnose_pod_did_not_run,
    diagnose_privileged_gpu_pods,
)
from k8s_gpu_acceptance.probe import read_document
from k8s_gpu_acceptance.sharing import eligible_gpu_nodes, gpu_sight, privileged_gpu_pods

pytestmark = [pytest.mark.gpu, pytest.mark.isolation, pytest.mark.ai_conformance("secure_accelerator_access")]
LAYERS = "driver,nvidia_smi,torch_cuda"
VARIANTS = ("no-request", "visible-all", "visible-uuid")


@pytest.fixture(scope="module")
def isolation_pods(request, open_scenario):
    """One namespace and probe ConfigMap for the module's pods, cleaned up at its end."""
    return open_scenario(request, "iso")


@pytest.fixture(scope="module")
def gpu_node(cluster_facts, gpu_settings):
    nodes = eligible_gpu_nodes(cluster_facts.nodes, gpu_settings)
    if not nodes:
        pytest.skip("isolation: no Ready GPU node that the suite's pods may land on")
    return nodes[0].name


def _env_for(variant, request):
    if variant == "no-request":
        return {}
    if variant == "visible-all":
        return {"NVIDIA_VISIBLE_DEVICES": "all"}
    run = request.getfixturevalue("probe_run")  # the main probe pod's document names a real UUID
    driver = run.layer("driver")
    uuids = [g.get("uuid") for g in driver.metric("gpus", [])] if driver is not None else []
    if not uuids or not uuids[0]:
        pytest.skip(
            f"isolation ({variant}): the main probe pod saw no GPU UUID to name ({run.error or 'no GPU'})"
        )
    return {"NVIDIA_VISIBLE_DEVICES": str(uuids[0])}


@pytest.mark.parametrize("variant", VARIANTS)
def test_pod_without_gpu_request_sees_no_gpu(
    request, variant, isolation_pods, gpu_node, gpu_settings, record_scenario
):
    env = _env_for(variant, request)
    name = isolation_pods.name(f"gpu-iso-{variant}")
    pod = isolation_pods.scenario_pod(
        name, scenario=f"isolation-{variant}", layers=LAYERS, gpus=0, node=gpu_node, env=env
    )
    isolation_pods.create_pod(pod)
    result, logs = isolation_pods.run_pod(name)
    where = f"pod {isolation_pods.namespace}/{name} on {result.node_name or gpu_node}"
    document, error = read_document(logs.get("probe", ""), where) if "probe" in logs else (None, None)
    if document is None:
        failure = result.failure
        if failure is not None:
            fail(diagnose_pod_did_not_run("isolation", where, failure.kind, failure.reason, failure.message))
        fail(diagnose_pod_did_not_run("isolation", where, "output", "no document", error or "empty log"))
    sight = gpu_sight(document)
    entry = {"node": result.node_name, "env": env, "sees": sight.describe(), "uuids": list(sight.uuids)}
    if not sight.sees_gpu:
        record_scenario(f"isolation.{variant}", {**entry, "verdict": "isolated"})
        return
    if gpu_settings.allow_envvar_sharing:
        record_scenario(
            f"isolation.{variant}",
            {**entry, "verdict": "deliberate sharing (--allow-envvar-sharing)"},
        )
        warnings.warn(
            f"isolation ({variant}): a pod without a GPU request sees {sight.describe()}; recorded as "
            "deliberate sharing (--allow-envvar-sharing)",
            stacklevel=1,
        )
        return
    record_scenario(f"isolation.{variant}", {**entry, "verdict": "leak"})
    fail(diagnose_isolation_leak(variant, sight.describe(), dict(document.env)))


def test_gpu_pods_do_not_run_privileged(cluster_connection, record_scenario):
    core = client.CoreV1Api(cluster_connection.api)
    pods = core.list_pod_for_all_namespaces(_request_timeout=REQUEST_TIMEOUT).items
    found = privileged_gpu_pods(cluster_connection.api.sanitize_for_serialization(p) for p in pods)
    record_scenario("isolation.privileged_gpu_pods", {"pods": found, "checked": len(pods)})
    if found:
        fail(diagnose_privileged_gpu_pods(found))
