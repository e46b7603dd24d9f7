"""The driver layer without NVML: /proc/driver/nvidia/gpus lists every GPU of the host in every container.

Seen on the 2-GPU H200 node (2026-11-25): a one-GPU pod of the small probe image (no nvidia-ml-py) counted
both GPUs from /proc and failed "sees 2 GPU(s) but requested 1"; only GPUs whose device node the container
has may count.
"""

from __future__ import annotations

from gpu_probe.layers.driver import _gpus_from_proc

HOST_GPUS = [
    {"name": "NVIDIA H200", "uuid": "GPU-3da86024", "pci_bus_id": "0000:00:05.0", "device_minor": 0},
    {"name": "NVIDIA H200", "uuid": "GPU-282317a3", "pci_bus_id": "0000:00:06.0", "device_minor": 1},
]


def test_only_gpus_whose_device_node_the_container_has_count() -> None:
    gpus = _gpus_from_proc(HOST_GPUS, ["/dev/nvidia1"])
    assert [(g["index"], g["uuid"]) for g in gpus] == [(0, "GPU-282317a3")]
    assert _gpus_from_proc(HOST_GPUS, []) == []
    assert len(_gpus_from_proc(HOST_GPUS, ["/dev/nvidia0", "/dev/nvidia1"])) == 2


def test_a_gpu_whose_minor_is_unknown_is_kept() -> None:
    unknown = [dict(HOST_GPUS[0], device_minor=None)]
    assert [g["uuid"] for g in _gpus_from_proc(unknown, [])] == ["GPU-3da86024"]
