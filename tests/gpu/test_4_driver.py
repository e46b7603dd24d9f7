"""Layer 4, driver: the NVIDIA driver, NVML and the device nodes are visible where the probe runs."""

import pytest

from k8s_gpu_acceptance.checks import fail, passed_probe_layer
from k8s_gpu_acceptance.diagnosis import diagnose_gpu_count

pytestmark = [pytest.mark.gpu, pytest.mark.driver, pytest.mark.ai_conformance("driver_runtime_management")]


def test_driver_and_devices_visible(probe_run, gpu_settings, run_state):
    layer = passed_probe_layer(probe_run, "driver", gpu_settings, run_state.target)
    gpu_count = layer.metric("gpu_count", 0)
    if run_state.target == "k8s" and gpu_count != gpu_settings.gpus:
        fail(
            diagnose_gpu_count(
                "driver",
                int(gpu_count),
                gpu_settings.gpus,
                probe_run.document.env.get("NVIDIA_VISIBLE_DEVICES"),
            )
        )
    assert gpu_count >= 1
