"""AI Conformance accelerator_metrics: a DCGM exporter exposes per-GPU utilization, memory, temperature
and power.

Not a layer of the chain. Skipped, with the reason, on a cluster without a DCGM exporter Service.
"""

import pytest
from kubernetes import client

from k8s_gpu_acceptance import dcgm
from k8s_gpu_acceptance.checks import fail
from k8s_gpu_acceptance.cluster import describe_api_error
from k8s_gpu_acceptance.diagnosis import Diagnosis

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.accelerator_metrics,
    pytest.mark.ai_conformance("accelerator_metrics"),
]


def test_dcgm_exporter_exposes_per_gpu_metrics(cluster_connection, record_scenario):
    core = client.CoreV1Api(cluster_connection.api)
    exporter, running = dcgm.find_exporter(core)
    if exporter is None:
        pytest.skip(
            "accelerator_metrics: no DCGM exporter Service in any namespace (GPU Operator: "
            "nvidia-dcgm-exporter; Helm chart dcgm-exporter); install one to evidence this requirement"
        )
    where = f"{exporter.namespace}/{exporter.service}"
    try:
        text = dcgm.scrape(core, exporter)
    except Exception as exc:
        fail(
            Diagnosis(
                "accelerator_metrics",
                f"{where}: /metrics not readable: {describe_api_error(exc, cluster_connection.server)}",
                f"the exporter's pods are not serving ({running} Running) or the suite may not proxy to it",
                "kubectl get pods for the exporter; grant get on services/proxy (manifests/base/rbac.yaml)",
                "metrics-unreachable",
            )
        )
    found = dcgm.check_series(text)
    record_scenario(
        "accelerator_metrics",
        {"exporter": where, "running_pods": running, "gpus": found.gpus, "series": found.found},
    )
    if not found.gpus or found.missing or found.incomplete:
        missing = ", ".join(found.missing) or "none"
        fail(
            Diagnosis(
                "accelerator_metrics",
                f"{where}: {len(found.gpus)} GPU(s) in the metrics; missing: {missing}; "
                f"series without every GPU: {found.incomplete or 'none'}",
                "the exporter's counters do not include these fields, or it cannot read some GPUs",
                "add the DCGM_FI_DEV_* fields to the exporter's counters CSV (default-counters.csv has them) "
                "and check its pods' logs",
                "metrics-missing",
            )
        )
