"""The probe's local diagnoses: each {cause, fix} decision from the facts one pod can see."""

from __future__ import annotations

import pytest
from gpu_probe.diagnosis import (
    RUNTIME_CLASS_FIX,
    diagnose_driver,
    diagnose_nvidia_smi_missing,
    diagnose_torch_cuda,
    missing_library,
    runtime_newer_than_driver,
    visible_devices_disabled,
)

GPU_NODES = ["/dev/nvidia-uvm", "/dev/nvidia0", "/dev/nvidiactl"]


def test_driver_healthy_has_no_diagnosis() -> None:
    assert diagnose_driver(GPU_NODES, True, None, {"NVIDIA_VISIBLE_DEVICES": "0"}, True) is None


def test_driver_runtime_did_not_inject_the_gpu() -> None:
    diag = diagnose_driver([], False, "nvmlInit failed", {"NVIDIA_VISIBLE_DEVICES": "GPU-1"}, True)
    assert diag is not None
    assert "did not inject the GPU" in diag["cause"]
    assert diag["fix"] == RUNTIME_CLASS_FIX
    assert "runtimeClassName" in diag["fix"]


@pytest.mark.parametrize("value", ["void", "none", ""])
def test_driver_visible_devices_disabled(value: str) -> None:
    assert visible_devices_disabled(value)
    diag = diagnose_driver([], False, None, {"NVIDIA_VISIBLE_DEVICES": value}, True)
    assert diag is not None
    assert "inject no GPU" in diag["cause"]


def test_driver_pod_without_gpu_request() -> None:
    diag = diagnose_driver([], False, None, {"NVIDIA_VISIBLE_DEVICES": None}, True)
    assert diag is not None
    assert "given no GPU" in diag["cause"]
    assert "nvidia.com/gpu" in diag["fix"]


def test_driver_host_without_driver() -> None:
    diag = diagnose_driver([], False, "NVMLError_LibraryNotFound", {}, False)
    assert diag is not None
    assert "no NVIDIA kernel driver on this host" in diag["cause"]
    assert "NVMLError_LibraryNotFound" in diag["cause"]


def test_driver_nodes_but_nvml_broken() -> None:
    diag = diagnose_driver(GPU_NODES, False, "NVMLError_LibraryNotFound", {}, False)
    assert diag is not None
    assert "NVML cannot start" in diag["cause"]
    assert "utility" in diag["fix"]


def test_nvidia_smi_missing_without_utility_capability() -> None:
    diag = diagnose_nvidia_smi_missing("compute", True, True)
    assert "'utility'" in diag["cause"]
    assert diag["fix"] == "set NVIDIA_DRIVER_CAPABILITIES=compute,utility in the image or pod env"


@pytest.mark.parametrize("caps", ["compute,utility", "all", None])
def test_nvidia_smi_missing_with_utility_means_runtime_did_not_run(caps: str | None) -> None:
    diag = diagnose_nvidia_smi_missing(caps, True, False)
    assert "did not inject" in diag["cause"]
    assert diag["fix"] == RUNTIME_CLASS_FIX


def test_nvidia_smi_missing_on_a_host_without_driver() -> None:
    assert "no NVIDIA driver on this host" in diagnose_nvidia_smi_missing(None, False, False)["cause"]


def test_nvidia_smi_missing_on_a_host_with_driver() -> None:
    assert "not on PATH" in diagnose_nvidia_smi_missing(None, False, True)["cause"]


@pytest.mark.parametrize(
    ("runtime", "driver", "expected"),
    [
        ("13.0", "13.0", False),
        ("12.8", "13.0", False),
        ("13.0", "12.4", True),
        ("12.8", "12.4", True),
        (None, "13.0", None),
        ("13.0", None, None),
    ],
)
def test_runtime_newer_than_driver(runtime: str | None, driver: str | None, expected: bool | None) -> None:
    assert runtime_newer_than_driver(runtime, driver) is expected


def test_torch_cpu_only_wheel() -> None:
    diag = diagnose_torch_cuda({"cuda_runtime_version": None, "cuda_available": False})
    assert diag is not None
    assert "CPU-only wheel" in diag["cause"]
    assert "torch.version.cuda is None" in diag["cause"]


def test_torch_runtime_newer_than_driver_is_the_insufficient_driver_case() -> None:
    diag = diagnose_torch_cuda(
        {
            "cuda_runtime_version": "13.0",
            "cuda_driver_version": "12.4",
            "cuda_available": False,
            "driver_present": True,
        }
    )
    assert diag is not None
    assert "CUDA driver version is insufficient" in diag["cause"]
    assert "upgrade the node's NVIDIA driver" in diag["fix"]


def test_torch_minor_newer_mentions_minor_version_compatibility() -> None:
    diag = diagnose_torch_cuda(
        {
            "cuda_runtime_version": "12.8",
            "cuda_driver_version": "12.4",
            "cuda_available": False,
            "driver_present": True,
        }
    )
    assert diag is not None
    assert "minor-version compatibility" in diag["cause"]


def test_torch_no_driver() -> None:
    diag = diagnose_torch_cuda(
        {
            "cuda_runtime_version": "13.2",
            "cuda_driver_version": None,
            "cuda_available": False,
            "driver_present": False,
            "init_error": "RuntimeError: Found no NVIDIA driver on your system.",
        }
    )
    assert diag is not None
    assert "finds no NVIDIA driver" in diag["cause"]
    assert "Found no NVIDIA driver" in diag["cause"]


def test_torch_matmul_disagreement() -> None:
    diag = diagnose_torch_cuda({"cuda_available": True, "device_count": 1, "matmul_ok": False})
    assert diag is not None
    assert "disagrees" in diag["cause"]


def test_torch_healthy() -> None:
    facts = {"cuda_runtime_version": "13.0", "cuda_available": True, "device_count": 1, "matmul_ok": True}
    assert diagnose_torch_cuda(facts) is None


def test_missing_library_names_package_and_image() -> None:
    text = missing_library("pynvml", "driver")
    assert "nvidia-ml-py is not installed in this image" in text
    assert "container/Dockerfile" in text
