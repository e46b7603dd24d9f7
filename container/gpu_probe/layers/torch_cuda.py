"""torch_cuda: does PyTorch see the GPU, with which CUDA runtime vs driver, and does it compute right?"""

from __future__ import annotations

import warnings
from typing import Any

from gpu_probe.core import Context, LayerResult
from gpu_probe.cudadriver import cuda_driver_version
from gpu_probe.diagnosis import diagnose_torch_cuda, missing_library, runtime_newer_than_driver

MATMUL_N = 1024
# fp32 GPU vs float64 CPU reference on seeded N(0,1) inputs: fp32 rounding gives a max abs error of ~1e-4 at
# n=1024 (measured on CPU); TF32 rounding would give ~4e-2, a wrong result far more: 2e-3 separates them.
MATMUL_TOLERANCE = 2e-3


def measure(ctx: Context, result: LayerResult) -> None:
    """Pass when cuda.is_available(), at least one device, and the seeded matmul agrees with the CPU."""
    try:
        import torch  # lazily: stock images have no torch
    except ImportError:
        result.set("error", missing_library("torch", "torch_cuda"))
        return
    driver_cuda = (
        ctx.results["driver"].metrics.get("cuda_driver_version") if "driver" in ctx.results else None
    )
    driver_error = None
    if not driver_cuda:
        driver_cuda, driver_error = cuda_driver_version()
    runtime = torch.version.cuda
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = bool(torch.cuda.is_available())
    init_error = None
    if not available and runtime is not None:
        try:
            torch.cuda.init()
        except Exception as exc:  # the driver's own reason ("Found no NVIDIA driver ...")
            init_error = f"{type(exc).__name__}: {exc}".strip()
    count = torch.cuda.device_count() if available else 0
    devices = [_device(torch, i) for i in range(count)]
    result.metrics.update(
        {
            "torch_version": torch.__version__,
            "cuda_runtime_version": runtime,
            "cuda_driver_version": driver_cuda,
            "cuda_available": available,
            "device_count": count,
            "devices": devices,
            "runtime_newer_than_driver": runtime_newer_than_driver(runtime, driver_cuda),
            "matmul_max_abs_err": None,
            "matmul_tolerance": MATMUL_TOLERANCE,
            "matmul_ok": False,
            "matmul_n": MATMUL_N,
        }
    )
    if caught:
        result.evidence["warnings"] = [str(w.message) for w in caught]
    if init_error:
        result.evidence["cuda_init_error"] = init_error
    if driver_error:
        result.evidence["cuda_driver_version_error"] = driver_error
    if available and count > 0:
        err = _matmul_error(torch, ctx.options.seed)
        result.metrics["matmul_max_abs_err"] = err
        result.metrics["matmul_ok"] = err <= MATMUL_TOLERANCE
    facts: dict[str, Any] = dict(result.metrics, init_error=init_error, driver_present=driver_error is None)
    diagnosis = diagnose_torch_cuda(facts)
    if available and count > 0 and result.metrics["matmul_ok"]:
        result.set("pass")
    elif available and count > 0:
        result.set(
            "fail",
            f"GPU matmul disagrees with CPU: max abs error "
            f"{result.metrics['matmul_max_abs_err']:.3g} > {MATMUL_TOLERANCE}",
            diagnosis,
        )
    else:
        result.set(
            "fail",
            "torch.cuda.is_available() is False" + (f" ({diagnosis['cause']})" if diagnosis else ""),
            diagnosis,
        )


def _device(torch: Any, index: int) -> dict[str, Any]:
    """Name, capability and memory of one CUDA device as torch sees it."""
    props = torch.cuda.get_device_properties(index)
    return {
        "index": index,
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "total_memory_mib": props.total_memory // (1024 * 1024),
        "multi_processor_count": props.multi_processor_count,
    }


def _matmul_error(torch: Any, seed: int) -> float:
    """Max |A@B (fp32 on GPU, TF32 off) - A@B (float64 on CPU)| for seeded N(0,1) matrices."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(MATMUL_N, MATMUL_N, generator=generator)
    b = torch.randn(MATMUL_N, MATMUL_N, generator=generator)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        gpu = (a.cuda() @ b.cuda()).cpu().double()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    reference = a.double() @ b.double()
    return float((gpu - reference).abs().max())
