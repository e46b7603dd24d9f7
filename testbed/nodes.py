"""The simulated nodes, as data: a later issue adds time-slicing and MIG nodes by adding specs here.

kwok plays the kubelet of every node: the apiserver, scheduler and controllers are real, the machines not.
GPU nodes carry the labels GPU Feature Discovery puts on the real H100 host.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

MANAGED_BY = "k8s-gpu-acceptance-testbed"
GPU_RESOURCE = "nvidia.com/gpu"

# GPU Feature Discovery labels of the real H100 host (driver 580.159.04, CUDA 13.0; see REFERENCE.md).
H100_GFD_LABELS: dict[str, str] = {
    "nvidia.com/gpu.present": "true",
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    "nvidia.com/gpu.memory": "81559",
    "nvidia.com/gpu.family": "hopper",
    "nvidia.com/gpu.compute.major": "9",
    "nvidia.com/gpu.compute.minor": "0",
    "nvidia.com/cuda.driver.major": "580",
    "nvidia.com/cuda.driver.minor": "159",
    "nvidia.com/cuda.driver.rev": "04",
    "nvidia.com/cuda.runtime.major": "13",
    "nvidia.com/cuda.runtime.minor": "0",
    "nvidia.com/gpu.replicas": "1",
    "nvidia.com/gpu.sharing-strategy": "none",
    "nvidia.com/mig.capable": "true",
}

GPU_TAINT: dict[str, str] = {"key": GPU_RESOURCE, "value": "true", "effect": "NoSchedule"}
# Scenario nodes (sharing/MIG) carry this taint, so pods that do not tolerate it (every default self-test and
# default suite run) never land there and the default scheduling (1-GPU pod -> gpu-node-1) is unchanged.
SCENARIO_TAINT_KEY = "testbed.k8s-gpu-acceptance.io/scenario"


@dataclass(frozen=True)
class NodeSpec:
    """One simulated node: what the scheduler sees (capacity, labels, taints)."""

    name: str
    gpus: int = 0
    cpu: str = "16"
    memory: str = "64Gi"
    pods: str = "110"
    instance_type: str = "cpu"
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()
    extended: dict[str, str] = field(default_factory=dict)  # more resources, e.g. nvidia.com/mig-1g.10gb

    def manifest(self) -> dict[str, Any]:
        """The Node object; kwok's node-initialize stage keeps the capacity/allocatable set here."""
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods}
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": self.instance_type,
            "type": "kwok",
            "app.kubernetes.io/managed-by": MANAGED_BY,
        }
        if self.gpus:
            resources[GPU_RESOURCE] = str(self.gpus)
            labels.update(H100_GFD_LABELS)
            labels["nvidia.com/gpu.count"] = str(self.gpus)
        resources.update(self.extended)
        labels.update(self.labels)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {"taints": [dict(t) for t in self.taints]},
            "status": {"capacity": dict(resources), "allocatable": dict(resources)},
        }


def gpu_node(name: str, gpus: int, taints: tuple[dict[str, str], ...] = ()) -> NodeSpec:
    """An H100 node sized like the cloud shapes users run (per-GPU share of a p5.48xlarge)."""
    return NodeSpec(
        name=name,
        gpus=gpus,
        cpu=str(24 * gpus),
        memory=f"{256 * gpus}Gi",
        instance_type="p5.48xlarge" if gpus == 8 else f"h100-{gpus}x",
        taints=taints,
    )


def default_nodes(gpu_nodes: int | None = None) -> list[NodeSpec]:
    """gpu-node-1 (1 GPU), gpu-node-8 (8 GPUs, tainted as on EKS GPU node groups), cpu-node.

    With `gpu_nodes=N`, N identical 1-GPU nodes gpu-node-1..N replace the single gpu-node-1.
    """
    count = 1 if gpu_nodes is None else gpu_nodes
    if count < 1:
        raise ValueError(f"--gpu-nodes must be at least 1, got {count}")
    nodes = [gpu_node(f"gpu-node-{i}", 1) for i in range(1, count + 1)]
    if count < 8:  # gpu-node-8 is the 8-GPU node unless N identical nodes already took that name
        nodes.append(gpu_node("gpu-node-8", 8, taints=(GPU_TAINT,)))
    nodes.append(NodeSpec(name="cpu-node"))
    return nodes + scenario_nodes()


def scenario_taint(scenario: str) -> dict[str, str]:
    return {"key": SCENARIO_TAINT_KEY, "value": scenario, "effect": "NoSchedule"}


def scenario_nodes() -> list[NodeSpec]:
    """GPU sharing as the device plugin and GPU Feature Discovery advertise it, one tainted node each.

    gpu-node-ts: one H100 time-sliced into 4 replicas (allocatable 4, labels as GFD sets them);
    gpu-node-mps: one H100 shared by MPS, 2 replicas; gpu-node-mig: mixed MIG strategy, one whole H100
    (nvidia.com/gpu 1) and one partitioned into 7 x nvidia.com/mig-1g.10gb.
    """
    shared = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-SHARED", "nvidia.com/gpu.count": "1"}
    ts = gpu_node("gpu-node-ts", 1, taints=(scenario_taint("time-slicing"),))
    mps = gpu_node("gpu-node-mps", 1, taints=(scenario_taint("mps"),))
    mig = gpu_node("gpu-node-mig", 1, taints=(scenario_taint("mig"),))
    return [
        dataclasses.replace(
            ts,
            gpus=4,
            labels={
                **shared,
                "nvidia.com/gpu.sharing-strategy": "time-slicing",
                "nvidia.com/gpu.replicas": "4",
            },
        ),
        dataclasses.replace(
            mps,
            gpus=2,
            labels={**shared, "nvidia.com/gpu.sharing-strategy": "mps", "nvidia.com/gpu.replicas": "2"},
        ),
        dataclasses.replace(
            mig,
            extended={"nvidia.com/mig-1g.10gb": "7"},
            labels={
                "nvidia.com/mig.strategy": "mixed",
                "nvidia.com/mig.capable": "true",
                "nvidia.com/mig-1g.10gb.count": "7",
                "nvidia.com/mig-1g.10gb.memory": "9984",
            },
        ),
    ]
