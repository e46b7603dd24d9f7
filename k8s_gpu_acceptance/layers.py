"""The layers the suite checks, in the order a GPU pod depends on them.

Owns the suite's layer table, used by the markers, the blocking logic, the diagnosis rules and the reports,
so that a layer's name, order, title and dependency are written down exactly once in the suite. The probe
keeps its own list (it must stay standalone); tests/unit/test_layer_table.py proves the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layer:
    """One named assessment: what it proves and which layer it cannot do without."""

    name: str
    title: str
    proves: str
    depends_on: str | None
    cluster_only: bool = False
    measured_by_probe: bool = False


LAYERS: tuple[Layer, ...] = (
    Layer("cluster", "Cluster", "the API server answers and its nodes are listed", None, cluster_only=True),
    Layer(
        "device_plugin",
        "Device plugin / DRA",
        "GPU nodes advertise nvidia.com/gpu, the device plugin is healthy, allocatable == capacity; with "
        "--allocation dra: DeviceClass gpu.nvidia.com exists and ResourceSlices publish GPUs per node",
        "cluster",
        cluster_only=True,
    ),
    Layer(
        "scheduling",
        "Scheduling",
        "the scheduler binds a pod requesting nvidia.com/gpu (or a DRA claim) to a GPU node, allocates the "
        "claim, and its container starts",
        "device_plugin",
        cluster_only=True,
    ),
    Layer(
        "driver",
        "Driver",
        "the NVIDIA driver and device nodes are visible in the pod",
        "scheduling",
        measured_by_probe=True,
    ),
    Layer(
        "nvidia_smi",
        "nvidia-smi",
        "nvidia-smi runs and lists exactly the allocated GPUs",
        "driver",
        measured_by_probe=True,
    ),
    Layer(
        "torch_cuda",
        "torch.cuda",
        "PyTorch sees the GPU and computes correctly on it",
        "driver",
        measured_by_probe=True,
    ),
    Layer(
        "gpt2",
        "GPT-2 generation",
        "a real model generates on the GPU within the latency budget, without CPU fallback",
        "torch_cuda",
        measured_by_probe=True,
    ),
    Layer(
        "gpu_perf",
        "GPU performance",
        "matmul throughput and memory bandwidth are a sane fraction of the GPU's spec",
        "torch_cuda",
        measured_by_probe=True,
    ),
)

BY_NAME: dict[str, Layer] = {layer.name: layer for layer in LAYERS}
LAYER_NAMES: tuple[str, ...] = tuple(layer.name for layer in LAYERS)
PROBE_LAYER_NAMES: tuple[str, ...] = tuple(layer.name for layer in LAYERS if layer.measured_by_probe)


def ancestors(name: str) -> list[str]:
    """The chain of layers `name` depends on, nearest first."""
    chain: list[str] = []
    current = BY_NAME[name].depends_on
    while current is not None:
        chain.append(current)
        current = BY_NAME[current].depends_on
    return chain
