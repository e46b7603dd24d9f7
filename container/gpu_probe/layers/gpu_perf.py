"""gpu_perf: bf16 matmul TFLOP/s and device-memory bandwidth GB/s with CUDA events, vs datasheet specs."""

from __future__ import annotations

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
    """Pass when both figures were measured on cuda:0; skipped when torch.cuda is not usable."""
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
    tflops = _matmul_tflops(torch)
    bandwidth, copy_bytes = _copy_bandwidth_gbps(torch)
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
            "matmul_reps": MATMUL_REPS,
            "copy_bytes": copy_bytes,
            "copy_reps": COPY_REPS,
            "bandwidth_counts": "bytes read + bytes written per device-to-device copy (2 x copy_bytes)",
            "spec_basis": "vendor datasheet, dense (no sparsity) bf16 tensor TFLOP/s; peak memory GB/s",
        }
    )
    result.evidence["method"] = (
        f"bf16 {MATMUL_N}^3 matmul (2*N^3 FLOP), {MATMUL_WARMUP} warm-up + {MATMUL_REPS} timed with CUDA "
        f"events; device-to-device copy of {copy_bytes} bytes, {COPY_WARMUP} warm-up + {COPY_REPS} timed"
    )
    result.set("pass")


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


def _matmul_tflops(torch: Any) -> float:
    """Dense bf16 matmul throughput on seeded random data (zeros would flatter the figure)."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16, generator=generator)
    b = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16, generator=generator)
    out = torch.empty_like(a)
    ms = _timed_ms(torch, lambda: torch.matmul(a, b, out=out), MATMUL_WARMUP, MATMUL_REPS)
    return 2.0 * MATMUL_N**3 / (ms / 1e3) / 1e12


def _copy_bandwidth_gbps(torch: Any) -> tuple[float, int]:
    """Device-to-device copy GB/s counting read + write, on a buffer that fits in a quarter of free memory."""
    free, _total = torch.cuda.mem_get_info()
    nbytes = min(COPY_BYTES, max(1 << 20, free // 4))
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").fill_(1)
    dst = torch.empty_like(src)
    ms = _timed_ms(torch, lambda: dst.copy_(src), COPY_WARMUP, COPY_REPS)
    torch.cuda.empty_cache()
    return 2.0 * nbytes / (ms / 1e3) / 1e9, nbytes
