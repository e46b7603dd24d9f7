"""SIMULATED Dynamic Resource Allocation for the kwok GPU nodes: the DeviceClass `gpu.nvidia.com` and one
ResourceSlice per GPU node, shaped as NVIDIA's DRA driver (k8s-dra-driver-gpu) publishes them.

No DRA kubelet plugin runs anywhere: these slices are written by `up`, not by a driver on the node. They are
what the REAL kube-scheduler (v1.36, DRA GA, resource.k8s.io/v1 served by default) reads to allocate a claim,
so claim allocation, the scheduler's DRA messages and the resourceclaim controller are real; preparing the
device on the node is not (kwok plays the kubelet, and the pod prints its recorded probe document as every
kwok pod does).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testbed.nodes import MANAGED_BY, NodeSpec

DRIVER = "gpu.nvidia.com"
DEVICE_CLASS = "gpu.nvidia.com"
# The H100 host's versions (driver 580.159.04, CUDA 13.0; REFERENCE.md), as the driver writes them: semver.
PRODUCT_NAME = "NVIDIA H100 80GB HBM3"
DRIVER_VERSION = "580.159.4"
CUDA_DRIVER_VERSION = "13.0.0"
LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY}


def device_class() -> dict[str, Any]:
    """The DeviceClass NVIDIA's Helm chart installs: full GPUs of its driver."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": DEVICE_CLASS, "labels": dict(LABELS)},
        "spec": {
            "selectors": [
                {
                    "cel": {
                        "expression": f"device.driver == '{DRIVER}' && "
                        f"device.attributes['{DRIVER}'].type == 'gpu'"
                    }
                }
            ]
        },
    }


def physical_gpus(spec: NodeSpec) -> int:
    """GPUs a DRA driver would publish: the physical count (a time-sliced node's 4 replicas are one H100)."""
    return int(spec.labels.get("nvidia.com/gpu.count", spec.gpus)) if spec.gpus else 0


def gpu_uuid(node: str, index: int) -> str:
    """A stable, made-up GPU UUID per node and index (the format nvidia-smi prints)."""
    return f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{node}.gpu-{index}.testbed')}"


def resource_slice(spec: NodeSpec) -> dict[str, Any]:
    """One slice (one pool, generation 1) with devices gpu-0..N-1 and the driver's attribute names."""
    devices = [
        {
            "name": f"gpu-{i}",
            "attributes": {
                "type": {"string": "gpu"},
                "uuid": {"string": gpu_uuid(spec.name, i)},
                "productName": {"string": PRODUCT_NAME},
                "brand": {"string": "Nvidia"},
                "architecture": {"string": "Hopper"},
                "cudaComputeCapability": {"version": "9.0.0"},
                "driverVersion": {"version": DRIVER_VERSION},
                "cudaDriverVersion": {"version": CUDA_DRIVER_VERSION},
                "index": {"int": i},
                "minor": {"int": i},
            },
            "capacity": {"memory": {"value": "81559Mi"}},
        }
        for i in range(physical_gpus(spec))
    ]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": slice_name(spec.name), "labels": dict(LABELS)},
        "spec": {
            "driver": DRIVER,
            "nodeName": spec.name,
            "pool": {"name": spec.name, "generation": 1, "resourceSliceCount": 1},
            "devices": devices,
        },
    }


def slice_name(node: str) -> str:
    return f"{node}-{DRIVER}"


def reconcile(api_client: client.ApiClient, specs: Iterable[NodeSpec], workers: int = 32) -> int:
    """The DeviceClass, and exactly one slice per GPU node of `specs` (others deleted), concurrently as the
    nodes are (`--gpu-nodes 1000`); returns the count."""
    resource = client.ResourceV1Api(api_client)
    wanted = {slice_name(s.name): resource_slice(s) for s in specs if physical_gpus(s)}
    dc = device_class()
    try:
        resource.create_device_class(dc)
    except ApiException as exc:
        if exc.status != 409:
            raise
        resource.replace_device_class(
            DEVICE_CLASS, _with_version(resource.read_device_class(DEVICE_CLASS), dc)
        )
    existing = {
        s.metadata.name: s
        for s in resource.list_resource_slice(
            label_selector=f"app.kubernetes.io/managed-by={MANAGED_BY}"
        ).items
    }

    def put(item: tuple[str, dict[str, Any]]) -> None:
        name, body = item
        if name in existing:
            resource.replace_resource_slice(name, _with_version(existing[name], body))
        else:
            resource.create_resource_slice(body)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(resource.delete_resource_slice, [n for n in existing if n not in wanted]))
        list(pool.map(put, wanted.items()))
    return len(wanted)


def _with_version(current: Any, body: dict[str, Any]) -> dict[str, Any]:
    """A replace needs the object's resourceVersion."""
    out = dict(body)
    out["metadata"] = {**body["metadata"], "resourceVersion": current.metadata.resource_version}
    return out
