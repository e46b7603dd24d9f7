"""Layer 4, driver: the NVIDIA driver, NVML and the device nodes are visible where the probe runs."""

import pytest

from fixtures.checks import fail, passed_probe_layer
from fixtures.diagnosis import diagnose_gpu_count

pytestmark = [pytest.mark.gpu, pytest.mark.driver]


def test_driver_and_devices_visible(probe_run, gpu_settings, run_state, layer_evidence):
    layer = passed_probe_layer(probe_run, "driver", gpu_settings, run_state.target, layer_evidence)
    metrics = layer["metrics"]
    run_state.environment.update(
        driver_version=metrics.get("driver_version"),
        cuda_driver_version=metrics.get("cuda_driver_version"),
        gpu_model=", ".join(sorted({g.get("name", "?") for g in metrics.get("gpus", [])})),
    )
    if run_state.target == "k8s" and metrics.get("gpu_count") != gpu_settings.gpus:
        fail(
            diagnose_gpu_count(
                "driver",
                int(metrics.get("gpu_count") or 0),
                gpu_settings.gpus,
                (probe_run.document or {}).get("env", {}).get("NVIDIA_VISIBLE_DEVICES"),
            )
        )
    assert metrics.get("gpu_count", 0) >= 1
