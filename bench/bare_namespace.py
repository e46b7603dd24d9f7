"""What the benches' bare clients set up before they time anything: a labelled namespace, its default
ServiceAccount (admission needs it before a pod) and the probe ConfigMap. Shared by bench_sweep.py and
bench_time_to_verdict.py; never timed."""

from __future__ import annotations

from kubernetes import client

from k8s_gpu_acceptance.pods import probe_configmap_data
from k8s_gpu_acceptance.run import run_labels
from k8s_gpu_acceptance.wait import Seen, Source, exists, wait_for


def make_bare_namespace(core: client.CoreV1Api, namespace: str, configmap: str) -> dict[str, str]:
    """Create `namespace` (labelled like a run's, so leftovers tooling finds it) with its ServiceAccount and
    the probe ConfigMap `configmap`; returns the ConfigMap's data."""
    labels = run_labels(namespace)
    core.create_namespace({"metadata": {"name": namespace, "labels": labels}})
    wait_for(
        Source(
            core.list_namespaced_service_account, (namespace,), {"field_selector": "metadata.name=default"}
        ),
        ["default"],
        exists,
        new=Seen,
        timeout_s=60,
    )
    data = probe_configmap_data()
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": configmap, "labels": labels}, "data": data}
    )
    return data
