"""Layer 5, nvidia-smi: it runs, and lists exactly the GPUs the pod was allocated."""

import pytest

from k8s_gpu_acceptance.checks import fail, passed_probe_layer
from k8s_gpu_acceptance.diagnosis import diagnose_gpu_count, diagnose_uuid_mismatch

pytestmark = [pytest.mark.gpu, pytest.mark.nvidia_smi]


def test_nvidia_smi_lists_exactly_the_allocated_gpus(probe_run, gpu_settings, run_state, layer_evidence):
    layer = passed_probe_layer(probe_run, "nvidia_smi", gpu_settings, run_state.target)
    smi_uuids = sorted(g.get("uuid") for g in layer.metric("gpus", []))
    nvml_uuids = sorted(g.get("uuid") for g in probe_run.document.layer("driver").metric("gpus", []))
    layer_evidence.metrics.update(smi_uuids=smi_uuids, nvml_uuids=nvml_uuids)
    if run_state.target == "k8s" and len(smi_uuids) != gpu_settings.gpus:
        fail(
            diagnose_gpu_count(
                "nvidia_smi",
                len(smi_uuids),
                gpu_settings.gpus,
                probe_run.document.env.get("NVIDIA_VISIBLE_DEVICES"),
            )
        )
    if nvml_uuids and smi_uuids != nvml_uuids:
        fail(diagnose_uuid_mismatch(smi_uuids, nvml_uuids))
    assert smi_uuids, "nvidia-smi passed but listed no GPU"
