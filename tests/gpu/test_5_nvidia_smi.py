"""Layer 5, nvidia-smi: it runs, and lists exactly the GPUs the pod was allocated."""

import pytest

from fixtures.checks import fail, passed_probe_layer
from fixtures.diagnosis import Diagnosis, diagnose_gpu_count

pytestmark = [pytest.mark.gpu, pytest.mark.nvidia_smi]


def test_nvidia_smi_lists_exactly_the_allocated_gpus(probe_run, gpu_settings, run_state, layer_evidence):
    layer = passed_probe_layer(probe_run, "nvidia_smi", gpu_settings, run_state.target, layer_evidence)
    smi_uuids = sorted(g.get("uuid") for g in layer["metrics"].get("gpus", []))
    driver = probe_run.layer("driver") or {}
    nvml_uuids = sorted(g.get("uuid") for g in (driver.get("metrics") or {}).get("gpus", []))
    layer_evidence.metrics.update(smi_uuids=smi_uuids, nvml_uuids=nvml_uuids)
    if run_state.target == "k8s" and len(smi_uuids) != gpu_settings.gpus:
        fail(
            diagnose_gpu_count(
                "nvidia_smi",
                len(smi_uuids),
                gpu_settings.gpus,
                (probe_run.document or {}).get("env", {}).get("NVIDIA_VISIBLE_DEVICES"),
            )
        )
    if nvml_uuids and smi_uuids != nvml_uuids:
        fail(
            Diagnosis(
                "nvidia_smi",
                f"nvidia-smi lists {smi_uuids}, NVML {nvml_uuids}",
                "nvidia-smi and NVML disagree about the visible GPUs (driver/library mismatch)",
                "reboot the node after a driver upgrade; check /proc/driver/nvidia/version",
                "uuid-mismatch",
            )
        )
    assert smi_uuids, "nvidia-smi passed but listed no GPU"
