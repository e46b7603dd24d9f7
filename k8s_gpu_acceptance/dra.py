"""GPUs through Dynamic Resource Allocation (resource.k8s.io/v1, GA since Kubernetes 1.34).

Owns what `--allocation dra` changes: the ResourceClaimTemplate the probe pod's claim is made from
(DeviceClass `gpu.nvidia.com`, `--gpus` devices), the pod spec's claim references (instead of an
`nvidia.com/gpu` limit), the facts the allocation layer reads (the DeviceClass, the ResourceSlices and
their devices' attributes as NVIDIA's DRA driver publishes them) and how `auto` chooses. The pure parts are
unit-tested; the API reads never raise (a failure is `DraFacts.error`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from k8s_gpu_acceptance.cluster import GPU_RESOURCE, REQUEST_TIMEOUT, Connection, describe_api_error
from k8s_gpu_acceptance.run import run_labels

DRA_DRIVER = "gpu.nvidia.com"
DEVICE_CLASS = "gpu.nvidia.com"
CLAIM_NAME = "gpu"  # the claim's name inside the pod (spec.resourceClaims[].name, resources.claims[].name)
ALLOCATIONS = ("device-plugin", "dra", "auto")
# What NVIDIA's DRA driver (k8s-dra-driver-gpu) publishes for every full GPU; the allocation layer asks for
# the ones a user reads versions from.
REQUIRED_ATTRIBUTES = ("uuid", "productName", "driverVersion", "cudaDriverVersion")


def claim_template_name(run_id: str) -> str:
    """The run's one ResourceClaimTemplate."""
    return f"gpu-probe-{run_id}"[:63].rstrip("-")


def claim_template(run_id: str, namespace: str, gpus: int, name: str | None = None) -> dict[str, Any]:
    """A ResourceClaimTemplate asking for exactly `gpus` devices of DeviceClass gpu.nvidia.com."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {
            "name": name or claim_template_name(run_id),
            "namespace": namespace,
            "labels": run_labels(run_id, "probe"),
        },
        "spec": {
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": "gpus",
                            "exactly": {
                                "deviceClassName": DEVICE_CLASS,
                                "allocationMode": "ExactCount",
                                "count": gpus,
                            },
                        }
                    ]
                }
            }
        },
    }


def use_claim(pod: dict[str, Any], template: str, container: int = 0) -> dict[str, Any]:
    """Give the pod's container its GPUs through a claim made from `template`, not through a limit."""
    spec = pod["spec"]
    spec["resourceClaims"] = [{"name": CLAIM_NAME, "resourceClaimTemplateName": template}]
    resources = spec["containers"][container].setdefault("resources", {})
    for key in ("limits", "requests"):
        (resources.get(key) or {}).pop(GPU_RESOURCE, None)
    resources["claims"] = [{"name": CLAIM_NAME}]
    return pod


def uses_claims(pod: Mapping[str, Any]) -> bool:
    """True when the pod gets devices through DRA."""
    return bool((pod.get("spec") or {}).get("resourceClaims"))


def attribute_values(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """A device's attributes as plain values: {"uuid": {"string": "GPU-1"}} -> {"uuid": "GPU-1"}.

    The API allows `gpu.nvidia.com/uuid` and `uuid` (the driver's own domain may be left out); both read
    as `uuid`.
    """
    out: dict[str, Any] = {}
    for key, value in (attributes or {}).items():
        name = key.split("/", 1)[1] if "/" in key else key
        if isinstance(value, Mapping) and value:
            out[name] = next(iter(v for v in value.values() if v is not None), None)
        else:
            out[name] = value
    return out


@dataclass
class NodeDevices:
    """What the ResourceSlices of one node publish for the GPU driver."""

    node: str
    driver: str
    devices: list[dict[str, Any]] = field(default_factory=list)  # {"name": .., **attribute values}

    @property
    def count(self) -> int:
        return len(self.devices)


@dataclass
class DraFacts:
    """The allocation layer's evidence under DRA: the DeviceClass, and the GPU devices per node."""

    device_class: dict[str, Any] | None = None
    nodes: list[NodeDevices] = field(default_factory=list)
    other_drivers: list[str] = field(default_factory=list)  # drivers of slices that are not gpu.nvidia.com
    api_served: bool = True
    error: str | None = None

    @property
    def usable(self) -> bool:
        """The DeviceClass exists and at least one node publishes a GPU: what `auto` picks DRA on."""
        return self.device_class is not None and any(n.count for n in self.nodes)

    def devices_on(self, node: str | None) -> int:
        return sum(n.count for n in self.nodes if n.node == node)


def node_devices(
    slices: list[dict[str, Any]], driver: str = DRA_DRIVER
) -> tuple[list[NodeDevices], list[str]]:
    """Group the slices' devices of `driver` by node (a pool may span several slices); pure.

    Returns the nodes and the other drivers seen (a cluster may publish only another vendor's devices).
    """
    by_node: dict[str, NodeDevices] = {}
    others: set[str] = set()
    for item in slices:
        spec = item.get("spec") or {}
        if spec.get("driver") != driver:
            others.add(str(spec.get("driver")))
            continue
        node = str(spec.get("nodeName") or (spec.get("pool") or {}).get("name") or "?")
        entry = by_node.setdefault(node, NodeDevices(node, driver))
        for device in spec.get("devices") or []:
            entry.devices.append({"name": device.get("name"), **attribute_values(device.get("attributes"))})
    return sorted(by_node.values(), key=lambda n: n.node), sorted(others)


def resolve_allocation(setting: str, facts: DraFacts | None) -> str:
    """`auto`: dra when the DeviceClass exists and ResourceSlices publish GPUs, else device-plugin."""
    if setting != "auto":
        return setting
    return "dra" if facts is not None and facts.usable else "device-plugin"


def gather_dra_facts(connection: Connection) -> DraFacts:
    """Read the DeviceClass and every ResourceSlice (two calls); never raises."""
    facts = DraFacts()
    resource = client.ResourceV1Api(connection.api)
    try:
        facts.device_class = connection.api.sanitize_for_serialization(
            resource.read_device_class(DEVICE_CLASS, _request_timeout=REQUEST_TIMEOUT)
        )
    except ApiException as exc:
        if exc.status != 404:
            facts.error = describe_api_error(exc, connection.server)
            return facts
        # 404 is either "no such DeviceClass" or "no resource.k8s.io/v1 at all": the slice list tells.
    except Exception as exc:
        facts.error = describe_api_error(exc, connection.server)
        return facts
    try:
        listed = resource.list_resource_slice(_request_timeout=REQUEST_TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            facts.api_served = False
            return facts
        facts.error = describe_api_error(exc, connection.server)
        return facts
    except Exception as exc:
        facts.error = describe_api_error(exc, connection.server)
        return facts
    slices = [connection.api.sanitize_for_serialization(s) for s in listed.items]
    facts.nodes, facts.other_drivers = node_devices(slices)
    return facts


@dataclass
class ClaimFacts:
    """One ResourceClaim of the probe pod as the scheduler left it."""

    name: str
    allocated: bool
    devices: list[str] = field(default_factory=list)  # "<driver>/<pool>/<device>"
    reserved_for: list[str] = field(default_factory=list)


def claim_facts(claim: Mapping[str, Any]) -> ClaimFacts:
    """Read a ResourceClaim's status (API JSON); pure."""
    status = claim.get("status") or {}
    allocation = status.get("allocation") or {}
    results = (allocation.get("devices") or {}).get("results") or []
    return ClaimFacts(
        name=str((claim.get("metadata") or {}).get("name")),
        allocated=bool(allocation),
        devices=[f"{r.get('driver')}/{r.get('pool')}/{r.get('device')}" for r in results],
        reserved_for=[str(r.get("name")) for r in status.get("reservedFor") or []],
    )


def pod_claim_names(pod: Mapping[str, Any]) -> list[str]:
    """The ResourceClaims the pod's templates were turned into (pod.status.resourceClaimStatuses)."""
    statuses = (pod.get("status") or {}).get("resourceClaimStatuses") or []
    return [str(s["resourceClaimName"]) for s in statuses if s.get("resourceClaimName")]
