"""gpu_perf: bf16 matmul TFLOP/s and device-memory bandwidth GB/s with CUDA events, vs datasheet specs."""

from __future__ import annotations

import math
from typing import Any

from gpu_probe.core import Context, LayerResult
from gpu_probe.diagnosis import missing_library
from gpu_probe.specs import lookup_spec, ratio

MATMUL_N = 8192
MATMUL_WARMUP = 3
MATMUL_REPS = 10
COPY_BYTES = 1 << 30  # 1 GiB source tensor; each copy reads 1 GiB and writes 1 GiB
COPY_WARMUP = 3
COPY_REPS = 20


def measure(ctx: Context, result: LayerResult) -> None:
    """Pass when both figures were measured on cuda:0 (and on every other GPU the pod has, in `per_gpu`);
    skipped when torch.cuda is not usable."""
    torch_layer = ctx.results.get("torch_cuda")
    if "torch_cuda" in ctx.options.layers and torch_layer is not None and torch_layer.status != "pass":
        result.set("skipped", f"torch_cuda did not pass ({torch_layer.status}): no GPU to measure")
        return
    try:
        import torch
    except ImportError:
        result.set("error", missing_library("torch", "gpu_perf"))
        return
    if not torch.cuda.is_available():
        result.set("skipped", "torch.cuda.is_available() is False: no GPU to measure")
        return
    name = torch.cuda.get_device_name(0)
    spec = lookup_spec(name)
    each_s = ctx.options.perf_seconds / 2
    tflops, matmul_reps = _matmul_tflops(torch, each_s)
    bandwidth, copy_bytes, copy_reps = _copy_bandwidth_gbps(torch, each_s)
    result.metrics.update(
        {
            "device_name": name,
            "bf16_tflops": round(tflops, 1),
            "memory_bandwidth_gbps": round(bandwidth, 1),
            "spec_label": spec["label"] if spec else None,
            "spec_bf16_tflops": spec["bf16_tflops"] if spec else None,
            "spec_memory_bandwidth_gbps": spec["memory_bandwidth_gbps"] if spec else None,
            "tflops_ratio": ratio(tflops, spec["bf16_tflops"]) if spec else None,
            "bandwidth_ratio": ratio(bandwidth, spec["memory_bandwidth_gbps"]) if spec else None,
            "matmul_shape": [MATMUL_N, MATMUL_N, MATMUL_N],
            "matmul_reps": matmul_reps,
            "copy_bytes": copy_bytes,
            "copy_reps": copy_reps,
            "perf_seconds": ctx.options.perf_seconds,
            "bandwidth_counts": "bytes read + bytes written per device-to-device copy (2 x copy_bytes)",
            "spec_basis": "vendor datasheet, dense (no sparsity) bf16 tensor TFLOP/s; peak memory GB/s",
        }
    )
    count = torch.cuda.device_count()
    if count > 1:  # a multi-GPU pod: every GPU it was given is measured, each on its own
        result.metrics["per_gpu"] = [_figures(0, name, spec, tflops, bandwidth)] + [
            _measure_device(torch, index, each_s) for index in range(1, count)
        ]
    result.evidence["method"] = (
        f"bf16 {MATMUL_N}^3 matmul (2*N^3 FLOP), {MATMUL_WARMUP} warm-up + {matmul_reps} timed with CUDA "
        f"events; device-to-device copy of {copy_bytes} bytes, {COPY_WARMUP} warm-up + {copy_reps} timed"
    )
    result.set("pass")


def _figures(
    index: int, name: str, spec: dict[str, Any] | None, tflops: float, bandwidth: float
) -> dict[str, Any]:
    """One GPU's row of `per_gpu`."""
    return {
        "index": index,
        "device_name": name,
        "bf16_tflops": round(tflops, 1),
        "memory_bandwidth_gbps": round(bandwidth, 1),
        "tflops_ratio": ratio(tflops, spec["bf16_tflops"]) if spec else None,
        "bandwidth_ratio": ratio(bandwidth, spec["memory_bandwidth_gbps"]) if spec else None,
    }


def _measure_device(torch: Any, index: int, each_s: float) -> dict[str, Any]:
    """The same two figures on cuda:<index> (tensors and events follow the current device)."""
    with torch.cuda.device(index):
        name = torch.cuda.get_device_name(index)
        tflops, _reps = _matmul_tflops(torch, each_s)
        bandwidth, _bytes, _copies = _copy_bandwidth_gbps(torch, each_s)
    return _figures(index, name, lookup_spec(name), tflops, bandwidth)


def _timed_ms(torch: Any, func: Any, warmup: int, reps: int) -> float:
    """Mean milliseconds of func() between CUDA events, after warm-up."""
    for _ in range(warmup):
        func()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        func()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end)) / reps


def reps_for(min_seconds: float, ms_per_rep: float, minimum: int) -> int:
    """Repetitions that keep the GPU busy for at least min_seconds (never fewer than the fixed minimum)."""
    if min_seconds <= 0 or ms_per_rep <= 0:
        return minimum
    return max(minimum, math.ceil(min_seconds * 1000.0 / ms_per_rep))


def _timed_for(torch: Any, func: Any, warmup: int, reps: int, min_seconds: float) -> tuple[float, int]:
    """Mean ms per call; with min_seconds > 0, a calibration run sizes a second run that lasts that long."""
    ms = _timed_ms(torch, func, warmup, reps)
    longer = reps_for(min_seconds, ms, reps)
    if longer > reps:
        ms = _timed_ms(torch, func, 0, longer)
    return ms, longer


def _matmul_tflops(torch: Any, min_seconds: float = 0.0) -> tuple[float, int]:
    """Dense bf16 matmul throughput on seeded random data (zeros would flatter the figure)."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16, generator=generator)
    b = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16, generator=generator)
    out = torch.empty_like(a)
    ms, reps = _timed_for(torch, lambda: torch.matmul(a, b, out=out), MATMUL_WARMUP, MATMUL_REPS, min_seconds)
    return 2.0 * MATMUL_N**3 / (ms / 1e3) / 1e12, reps


def _copy_bandwidth_gbps(torch: Any, min_seconds: float = 0.0) -> tuple[float, int, int]:
    """Device-to-device copy GB/s counting read + write, on a buffer that fits in a quarter of free memory."""
    free, _total = torch.cuda.mem_get_info()
    nbytes = min(COPY_BYTES, max(1 << 20, free // 4))
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").fill_(1)
    dst = torch.empty_like(src)
    ms, reps = _timed_for(torch, lambda: dst.copy_(src), COPY_WARMUP, COPY_REPS, min_seconds)
    torch.cuda.empty_cache()
    return 2.0 * nbytes / (ms / 1e3) / 1e9, nbytes, reps
