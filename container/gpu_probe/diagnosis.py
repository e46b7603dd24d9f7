"""Local diagnoses: what the probe can conclude from facts inside the pod alone, as {cause, fix}.

Cluster-wide rules (device plugin, scheduling) belong to the suite (fixtures/diagnosis.py); these only use
what one process can see: device nodes, environment, libraries, versions. Pure functions.
"""

from __future__ import annotations

from typing import Any

from gpu_probe.parsers import version_tuple

RUNTIME_CLASS_FIX = (
    "run the pod with the NVIDIA container runtime: set spec.runtimeClassName: nvidia (or make nvidia the "
    "node's default containerd runtime) and request nvidia.com/gpu in resources.limits"
)


def _diag(cause: str, fix: str) -> dict[str, str]:
    """One diagnosis entry."""
    return {"cause": cause, "fix": fix}


def visible_devices_disabled(value: str | None) -> bool:
    """NVIDIA_VISIBLE_DEVICES values that tell the runtime to inject no GPU."""
    return value is not None and value.strip().lower() in ("void", "none", "")


def diagnose_driver(
    device_nodes: list[str],
    proc_version_present: bool,
    nvml_error: str | None,
    env: dict[str, str | None],
    in_kubernetes: bool,
) -> dict[str, str] | None:
    """Why no driver/GPU is visible: runtime did not inject it, no GPU requested, or no driver on the host."""
    gpu_nodes = [
        node for node in device_nodes if node.rstrip("0123456789") == "/dev/nvidia" and node[-1].isdigit()
    ]
    if gpu_nodes and (proc_version_present or nvml_error is None):
        return None
    visible = env.get("NVIDIA_VISIBLE_DEVICES")
    if visible_devices_disabled(visible):
        return _diag(
            f"NVIDIA_VISIBLE_DEVICES={visible!r} tells the NVIDIA container runtime to inject no GPU",
            "request nvidia.com/gpu in the pod's resources.limits (the device plugin then sets the variable) "
            "and do not override NVIDIA_VISIBLE_DEVICES in the pod spec",
        )
    if visible is not None and not gpu_nodes:
        return _diag(
            f"NVIDIA_VISIBLE_DEVICES={visible!r} is set but no /dev/nvidia<N> device node exists: the NVIDIA "
            "container runtime did not inject the GPU (the container ran under plain runc)",
            RUNTIME_CLASS_FIX,
        )
    if in_kubernetes and not gpu_nodes:
        return _diag(
            "no /dev/nvidia<N> device node and no NVIDIA_VISIBLE_DEVICES: the pod was given no GPU",
            "request nvidia.com/gpu in resources.limits and set runtimeClassName: nvidia",
        )
    if not gpu_nodes and not proc_version_present:
        return _diag(
            "no NVIDIA kernel driver on this host: /proc/driver/nvidia/version and /dev/nvidia<N> are absent"
            + (f" and NVML says: {nvml_error}" if nvml_error else ""),
            "run on a host with an NVIDIA GPU and its driver installed (nvidia-smi works on the host), or "
            "use the k8s target against a GPU node",
        )
    if gpu_nodes and nvml_error:
        return _diag(
            f"device nodes are present but NVML cannot start: {nvml_error}",
            "the driver's user-space libraries (libnvidia-ml.so.1) are missing or do not match the kernel "
            "module: with the NVIDIA runtime keep NVIDIA_DRIVER_CAPABILITIES including 'utility'; on a host "
            "reinstall the driver or reboot after an upgrade",
        )
    return None


def diagnose_nvidia_smi_missing(
    capabilities: str | None, nvidia_runtime_expected: bool, driver_present: bool
) -> dict[str, str]:
    """nvidia-smi not found: no driver at all, 'utility' capability missing, or the runtime did not run.

    nvidia_runtime_expected: in Kubernetes, or NVIDIA_* variables set (the image expects the runtime).
    """
    caps = {c.strip().lower() for c in (capabilities or "").split(",") if c.strip()}
    if nvidia_runtime_expected and capabilities is not None and "utility" not in caps and "all" not in caps:
        return _diag(
            "nvidia-smi is not in the container: the NVIDIA runtime mounts it only when "
            f"NVIDIA_DRIVER_CAPABILITIES includes 'utility' (it is {capabilities!r})",
            "set NVIDIA_DRIVER_CAPABILITIES=compute,utility in the image or pod env",
        )
    if nvidia_runtime_expected:
        return _diag(
            "nvidia-smi is not in the container: the NVIDIA container runtime did not inject the driver's "
            "utilities" + ("" if driver_present else " (nor the GPU: see the driver layer)"),
            RUNTIME_CLASS_FIX,
        )
    if not driver_present:
        return _diag(
            "no NVIDIA driver on this host (see the driver layer); nvidia-smi ships with the driver",
            "run on a host with an NVIDIA GPU and its driver installed",
        )
    return _diag(
        "the NVIDIA driver is loaded but nvidia-smi is not on PATH: its utilities are not installed here",
        "install the driver's utilities package (e.g. nvidia-utils-<version>) or add its bin folder to PATH",
    )


def runtime_newer_than_driver(runtime: str | None, driver: str | None) -> bool | None:
    """Is the CUDA runtime torch was built with newer than the CUDA version the driver supports?"""
    rt, drv = version_tuple(runtime), version_tuple(driver)
    if rt is None or drv is None:
        return None
    return rt[:2] > drv[:2]


def diagnose_torch_cuda(facts: dict[str, Any]) -> dict[str, str] | None:
    """Why torch.cuda.is_available() is False (or the matmul disagrees), from torch's own facts.

    facts: cuda_runtime_version, cuda_driver_version, cuda_available, device_count, matmul_ok, init_error,
    driver_present.
    """
    runtime = facts.get("cuda_runtime_version")
    driver = facts.get("cuda_driver_version")
    if facts.get("cuda_available") and facts.get("device_count", 0) > 0:
        if facts.get("matmul_ok") is False:
            return _diag(
                "a matmul on the GPU disagrees with the same matmul on the CPU beyond the tolerance",
                "the GPU computes wrong results: check nvidia-smi -q for ECC errors / row remapping failures,"
                " "
                "drain the node and have the GPU checked",
            )
        return None
    if runtime is None:
        return _diag(
            "torch was built without CUDA (torch.version.cuda is None): a CPU-only wheel is installed",
            "install a CUDA build of torch, e.g. pip install torch --index-url "
            "https://download.pytorch.org/whl/cu128, or use the image built from container/Dockerfile",
        )
    newer = runtime_newer_than_driver(runtime, driver)
    if newer:
        rt, drv = version_tuple(runtime), version_tuple(driver)
        same_major = rt is not None and drv is not None and rt[0] == drv[0]
        return _diag(
            f"torch's CUDA runtime {runtime} is newer than the driver's CUDA {driver}"
            + (
                " (minor-version compatibility may still work, but not for all kernels)"
                if same_major
                else ": the classic 'CUDA driver version is insufficient for CUDA runtime version'"
            ),
            f"upgrade the node's NVIDIA driver to one supporting CUDA {runtime}, or use a torch build for "
            f"CUDA <= {driver} (a different --index-url cuXY wheel / image base)",
        )
    if not facts.get("driver_present"):
        return _diag(
            "torch has CUDA "
            + str(runtime)
            + " but finds no NVIDIA driver (libcuda.so.1 not loadable)"
            + (f": {facts['init_error']}" if facts.get("init_error") else ""),
            "see the driver layer: the GPU and its driver must be visible in the container first",
        )
    return _diag(
        "the driver is present but torch sees no usable GPU"
        + (f": {facts['init_error']}" if facts.get("init_error") else ""),
        "check CUDA_VISIBLE_DEVICES, the device nodes' permissions for this user, and the driver layer",
    )


def missing_library(module: str, layer: str) -> str:
    """The error text for an optional library that this image lacks."""
    package = {"pynvml": "nvidia-ml-py", "torch": "torch", "transformers": "transformers"}.get(module, module)
    return (
        f"{package} is not installed in this image (import {module} failed), so the {layer} layer cannot "
        "measure: use the image built from container/Dockerfile or pip install -r container/requirements.txt"
    )
