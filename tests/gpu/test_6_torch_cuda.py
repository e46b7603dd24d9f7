"""Layer 6, torch.cuda: PyTorch sees the GPU and a seeded matmul on it matches the CPU."""

import pytest

from fixtures.checks import fail, passed_probe_layer
from fixtures.diagnosis import Diagnosis

pytestmark = [pytest.mark.gpu, pytest.mark.torch_cuda]


def test_torch_sees_gpu_and_computes_correctly(probe_run, gpu_settings, run_state, layer_evidence):
    layer = passed_probe_layer(probe_run, "torch_cuda", gpu_settings, run_state.target, layer_evidence)
    m = layer["metrics"]
    run_state.environment["cuda_runtime_version"] = m.get("cuda_runtime_version")
    run_state.environment["torch_version"] = m.get("torch_version")
    if not m.get("cuda_available") or int(m.get("device_count") or 0) < 1:
        fail(
            Diagnosis(
                "torch_cuda",
                f"torch.cuda.is_available()={m.get('cuda_available')}, device_count={m.get('device_count')}",
                "PyTorch cannot use the GPU",
                "see the probe's error in the evidence",
                "cuda-unavailable",
            )
        )
    if not m.get("matmul_ok"):
        fail(
            Diagnosis(
                "torch_cuda",
                f"GPU matmul differs from CPU: max abs error {m.get('matmul_max_abs_err')} > "
                f"tolerance {m.get('matmul_tolerance')}",
                "the GPU computes wrong results (hardware fault, ECC errors, or a broken driver)",
                "drain the node and run dcgmi diag -r 3; check XIDs in dmesg",
                "matmul-mismatch",
            )
        )
    if run_state.target == "k8s" and int(m["device_count"]) != gpu_settings.gpus:
        fail(
            Diagnosis(
                "torch_cuda",
                f"torch sees {m['device_count']} GPU(s), the pod requested {gpu_settings.gpus}",
                "CUDA_VISIBLE_DEVICES or the runtime exposes other GPUs",
                "do not set CUDA/NVIDIA_VISIBLE_DEVICES in the image",
                "device-count",
            )
        )
