"""driver: NVML (nvidia-ml-py, when importable), /dev/nvidia*, /proc/driver/nvidia and the NVIDIA env.

Without pynvml (a stock image with the probe mounted from a ConfigMap) the layer still measures from /proc
and /dev alone, and reads the CUDA driver version from libcuda via ctypes; nvml_available says which.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from gpu_probe.core import Context, LayerResult
from gpu_probe.cudadriver import cuda_driver_version
from gpu_probe.diagnosis import diagnose_driver
from gpu_probe.parsers import (
    cuda_version_string,
    normalise_nvml_gpu,
    nvml_text,
    parse_proc_driver_version,
    parse_proc_gpu_information,
)

PROC_VERSION = "/proc/driver/nvidia/version"
PROC_GPUS = "/proc/driver/nvidia/gpus"


def _read(path: str) -> str | None:
    """A small text file's content, or None when it is absent/unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def measure(ctx: Context, result: LayerResult) -> None:
    """Fill the driver layer: pass when the driver is loaded and at least one GPU is visible."""
    device_nodes = sorted(glob.glob("/dev/nvidia*"))
    proc_text = _read(PROC_VERSION)
    proc = parse_proc_driver_version(proc_text) if proc_text else None
    proc_gpus = [
        dict(
            parse_proc_gpu_information(_read(os.path.join(path, "information")) or ""),
            bus=os.path.basename(path),
        )
        for path in sorted(glob.glob(os.path.join(PROC_GPUS, "*")))
    ]
    result.evidence.update(
        {"proc_driver_version_text": proc_text, "proc_gpus": proc_gpus, "device_nodes": device_nodes}
    )
    nvml, nvml_error = _nvml_snapshot()
    cuda_driver, cuda_error = (nvml["cuda_driver_version"], None) if nvml else cuda_driver_version()
    gpu_nodes = [n for n in device_nodes if n.startswith("/dev/nvidia") and n[len("/dev/nvidia") :].isdigit()]
    gpus: list[dict[str, Any]] = (
        [normalise_nvml_gpu(raw) for raw in nvml["gpus_raw"]]
        if nvml
        else _gpus_from_proc(proc_gpus, gpu_nodes)
    )
    result.metrics.update(
        {
            "nvml_available": nvml is not None,
            "driver_version": (nvml["driver_version"] if nvml else None)
            or (proc or {}).get("driver_version"),
            "cuda_driver_version": cuda_driver,
            "gpu_count": len(gpus) if (nvml or gpus) else len(gpu_nodes),
            "gpus": gpus,
            "device_nodes": device_nodes,
            "proc_driver_version": (proc or {}).get("driver_version"),
            "kernel_module": (proc or {}).get("kernel_module"),
            "nvml_version": nvml["nvml_version"] if nvml else None,
        }
    )
    if nvml:
        result.evidence["nvml_raw"] = nvml
    if nvml_error:
        result.evidence["nvml_error"] = nvml_error
    if cuda_error:
        result.evidence["cuda_driver_version_error"] = cuda_error
    diagnosis = diagnose_driver(device_nodes, proc_text is not None, nvml_error, ctx.env, ctx.in_kubernetes)
    if result.metrics["driver_version"] and result.metrics["gpu_count"] > 0 and diagnosis is None:
        result.set("pass")
        return
    missing = []
    if not gpu_nodes:
        missing.append("no /dev/nvidia<N> device node")
    if proc_text is None:
        missing.append(f"no {PROC_VERSION}")
    if nvml_error:
        missing.append(f"NVML: {nvml_error}")
    if result.metrics["gpu_count"] == 0:
        missing.append("0 GPUs visible")
    result.set("fail", "NVIDIA driver/GPU not visible: " + "; ".join(missing or ["unknown"]), diagnosis)


def _gpus_from_proc(proc_gpus: list[dict[str, Any]], gpu_nodes: list[str]) -> list[dict[str, Any]]:
    """Without NVML: what /proc/driver/nvidia/gpus/*/information tells (name, uuid, bus); rest unknown.

    /proc lists every GPU of the host in every container (seen on a 2-GPU node: a one-GPU pod read two), so
    only GPUs whose /dev/nvidia<minor> this container has count; one whose minor is unknown is kept.
    """
    keys = ("memory_total_mib", "persistence_mode", "mig_mode", "compute_mode", "ecc_mode", "retired_pages")
    openable = [
        g
        for g in proc_gpus
        if g.get("device_minor") is None or f"/dev/nvidia{g['device_minor']}" in gpu_nodes
    ]
    return [
        dict(
            {"index": i, "name": g.get("name"), "uuid": g.get("uuid"), "pci_bus_id": g.get("pci_bus_id")},
            **dict.fromkeys(keys),
        )
        for i, g in enumerate(openable)
    ]


def _nvml_snapshot() -> tuple[dict[str, Any] | None, str | None]:
    """Raw NVML values for every GPU, or (None, why NVML is unavailable)."""
    try:
        import pynvml  # lazily: nvidia-ml-py is optional (stock images have none)
    except ImportError:
        return None, "nvidia-ml-py (pynvml) is not installed in this image; measured from /proc and /dev only"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded / ...
        return None, f"nvmlInit failed: {type(exc).__name__}: {exc}"
    try:
        count = pynvml.nvmlDeviceGetCount()
        snapshot: dict[str, Any] = {
            "driver_version": nvml_text(_call(pynvml.nvmlSystemGetDriverVersion)),
            "nvml_version": nvml_text(_call(pynvml.nvmlSystemGetNVMLVersion)),
            "cuda_driver_version_int": _call(pynvml.nvmlSystemGetCudaDriverVersion_v2),
            "gpus_raw": [_nvml_gpu(pynvml, i) for i in range(count)],
        }
        snapshot["cuda_driver_version"] = cuda_version_string(snapshot["cuda_driver_version_int"])
        return snapshot, None
    finally:
        _call(pynvml.nvmlShutdown)


def _call(func: Any, *args: Any) -> Any:
    """One NVML query; None when the GPU/driver does not support it (NVMLError_NotSupported etc.)."""
    try:
        return func(*args)
    except Exception:
        return None


def _nvml_gpu(pynvml: Any, index: int) -> dict[str, Any]:
    """Raw NVML values of one GPU, JSON-able (normalised by parsers.normalise_nvml_gpu)."""
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = _call(pynvml.nvmlDeviceGetMemoryInfo, handle)
    pci = _call(pynvml.nvmlDeviceGetPciInfo, handle)
    retired: dict[str, Any] | None = {}
    for cause, key in ((0, "single_bit_ecc"), (1, "double_bit_ecc")):
        pages = _call(pynvml.nvmlDeviceGetRetiredPages, handle, cause)
        if pages is not None and retired is not None:
            retired[key] = list(pages)
    remapped = _call(pynvml.nvmlDeviceGetRemappedRows, handle)
    return {
        "index": index,
        "name": nvml_text(_call(pynvml.nvmlDeviceGetName, handle)),
        "uuid": nvml_text(_call(pynvml.nvmlDeviceGetUUID, handle)),
        "memory_total_bytes": getattr(memory, "total", None),
        "memory_used_bytes": getattr(memory, "used", None),
        "persistence_mode": _call(pynvml.nvmlDeviceGetPersistenceMode, handle),
        "mig_mode": _listify(_call(pynvml.nvmlDeviceGetMigMode, handle)),
        "compute_mode": _call(pynvml.nvmlDeviceGetComputeMode, handle),
        "ecc_mode": _listify(_call(pynvml.nvmlDeviceGetEccMode, handle)),
        "retired_pages": retired or None,
        "remapped_rows": _listify(remapped),
        "pci_bus_id": nvml_text(getattr(pci, "busId", None)),
        "cuda_capability": _listify(_call(pynvml.nvmlDeviceGetCudaComputeCapability, handle)),
    }


def _listify(value: Any) -> Any:
    """NVML returns tuples for (current, pending) pairs; JSON wants lists."""
    return list(value) if isinstance(value, tuple) else value
