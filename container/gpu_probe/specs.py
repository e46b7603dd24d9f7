"""Vendor datasheet figures for the GPUs the suite is likely to meet: dense bf16 TFLOP/s and memory GB/s.

Dense = without 2:4 structured sparsity (datasheets print the sparse figure with an asterisk; it is halved
here). Matching is by the device name CUDA reports, most specific pattern first. Unknown GPU -> no ratio.
Sources (NVIDIA datasheets): H100 https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
H200 https://nvdam.widen.net/s/nb5zzzsjdf/hpc-datasheet-sc23-h200-datasheet-3002446
A100 https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
L4 https://resources.nvidia.com/en-us-data-center-overview/l4-gpu-datasheet
L40S https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413
A10 https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a10/pdf/datasheet-new/nvidia-a10-datasheet.pdf
T4 https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf
"""

from __future__ import annotations

import re
from typing import Any

# (regex on the device name, label, dense bf16 TFLOP/s or None, memory bandwidth GB/s)
GPU_SPECS: tuple[tuple[str, str, float | None, float], ...] = (
    (r"H100.*NVL", "H100 NVL 94GB", 835.0, 3900.0),
    (r"H100.*PCIe", "H100 PCIe 80GB", 756.0, 2000.0),
    (r"H100", "H100 SXM5 80GB HBM3", 989.0, 3350.0),
    (r"H200.*NVL", "H200 NVL 141GB", 835.0, 4800.0),
    (r"H200", "H200 SXM 141GB", 989.0, 4800.0),
    (r"A100-SXM4-80GB", "A100 SXM4 80GB", 312.0, 2039.0),
    (r"A100.*80GB", "A100 PCIe 80GB", 312.0, 1935.0),
    (r"A100", "A100 40GB", 312.0, 1555.0),
    (r"L40S", "L40S", 362.0, 864.0),
    (r"L4\b", "L4", 121.0, 300.0),
    # A10G is AWS's variant: NVIDIA publishes no datasheet bf16 figure for it; memory is the A10's 600 GB/s.
    (r"A10G", "A10G", None, 600.0),
    (r"A10\b", "A10", 125.0, 600.0),
    # T4 (Turing) has no bf16 tensor cores: no bf16 figure to compare with.
    (r"T4\b", "T4", None, 320.0),
)


def lookup_spec(device_name: str | None) -> dict[str, Any] | None:
    """The datasheet entry matching a CUDA device name, or None for an unknown GPU."""
    if not device_name:
        return None
    for pattern, label, tflops, bandwidth in GPU_SPECS:
        if re.search(pattern, device_name):
            return {"label": label, "bf16_tflops": tflops, "memory_bandwidth_gbps": bandwidth}
    return None


def ratio(measured: float | None, spec: float | None) -> float | None:
    """measured / spec rounded, or None when either is unknown."""
    if measured is None or not spec:
        return None
    return round(measured / spec, 3)
