"""Layer 6, torch.cuda: PyTorch sees the GPU and a seeded matmul on it matches the CPU."""

import pytest

from k8s_gpu_acceptance.checks import fail, passed_probe_layer
from k8s_gpu_acceptance.diagnosis import (
    diagnose_cuda_unavailable,
    diagnose_matmul_mismatch,
    diagnose_torch_device_count,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.torch_cuda,
    pytest.mark.ai_conformance("driver_runtime_management"),
]


def test_torch_sees_gpu_and_computes_correctly(probe_run, gpu_settings, run_state):
    m = passed_probe_layer(probe_run, "torch_cuda", gpu_settings, run_state.target).metrics
    if not m.get("cuda_available") or int(m.get("device_count") or 0) < 1:
        fail(diagnose_cuda_unavailable(m.get("cuda_available"), m.get("device_count")))
    if not m.get("matmul_ok"):
        fail(diagnose_matmul_mismatch(m.get("matmul_max_abs_err"), m.get("matmul_tolerance")))
    if run_state.target == "k8s" and int(m["device_count"]) != gpu_settings.gpus:
        fail(diagnose_torch_device_count(m["device_count"], gpu_settings.gpus))
