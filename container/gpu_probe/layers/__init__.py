"""The probe's layers, one module each, in document order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpu_probe.layers import driver, gpt2, gpu_perf, nvidia_smi, torch_cuda

if TYPE_CHECKING:
    from gpu_probe.core import LayerFunc

LAYER_FUNCS: dict[str, LayerFunc] = {
    "driver": driver.measure,
    "nvidia_smi": nvidia_smi.measure,
    "torch_cuda": torch_cuda.measure,
    "gpu_perf": gpu_perf.measure,
    "gpt2": gpt2.measure,
}
