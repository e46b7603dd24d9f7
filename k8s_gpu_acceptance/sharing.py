"""Sharing, isolation and exhaustion: how the cluster shares GPUs, measured with extra pods.

Owns the pure logic (detection from node labels and allocatable, shares, overlaps, what a probe document saw,
the mps-check document), unit-tested on recordings; the scenario pod specs (`scenario_pod`, `holder_pod`,
built on `pods.build_probe_pod`); the holder/extra wait conditions; and `ScenarioPods`, a `pods.PodSession`
with the scenario helpers, so there is one pod lifecycle in the suite, not two.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k8s_gpu_acceptance import dra, mps_check
from k8s_gpu_acceptance.checks import fail
from k8s_gpu_acceptance.cluster import GPU_RESOURCE, REQUEST_TIMEOUT, Connection, NodeFacts, api_json
from k8s_gpu_acceptance.diagnosis import Diagnosis, diagnose_isolation_leak, diagnose_pod_did_not_run
from k8s_gpu_acceptance.document import ProbeDocument
from k8s_gpu_acceptance.pods import (
    UNFINISHED,
    PodRun,
    PodSession,
    PodState,
    Progress,
    build_probe_pod,
    classify_pod,
)
from k8s_gpu_acceptance.probe import read_document
from k8s_gpu_acceptance.run import RUN_ID_KEY, run_labels
from k8s_gpu_acceptance.settings import Settings, Toleration

SCENARIO_ANNOTATION = "k8s-gpu-acceptance/scenario"
SYNC_START = Path(__file__).with_name("sync_start.py")
MPS_CHECK = Path(__file__).with_name("mps_check.py")
MPS_LIMIT = "0=4G"  # the pinned device memory limit the MPS memory-limit pod sets for itself
START_AT_ENV = "GPU_ACCEPTANCE_START_AT"
MAX_EXHAUSTION_NODES = 3
MAX_HOLDERS_PER_NODE = 64
MAX_REPLICAS = 8
SHARE_TOLERANCE = (0.5, 1.5)  # a replica's share must lie within 0.5x..1.5x of 1/N
MIG_MEMORY_TOLERANCE = (0.85, 1.15)  # seen GB / profile GB
MIG_RESOURCE = re.compile(r"^nvidia\.com/mig-(?:(\d+)c\.)?(\d+)g\.(\d+(?:\.\d+)?)gb(?:\+me)?$")
HOLDER_REQUESTS = {"cpu": "10m", "memory": "32Mi"}


# --- detection --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SharingConfig:
    """How one node shares its GPUs, and which labels or figures said so."""

    node: str
    strategy: str  # "time-slicing" | "mps" | "none"
    replicas: int
    physical: int | None
    allocatable: int
    evidence: tuple[str, ...] = ()

    @property
    def shared(self) -> bool:
        return self.strategy in ("time-slicing", "mps")


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def detect_sharing(node: NodeFacts) -> SharingConfig:
    """Read GPU Feature Discovery's labels and the allocatable count; any one sign of sharing counts."""
    labels = node.labels
    label_strategy = labels.get("nvidia.com/gpu.sharing-strategy", "")
    replicas = _int(labels.get("nvidia.com/gpu.replicas")) or 1
    physical = _int(labels.get("nvidia.com/gpu.count"))
    product = labels.get("nvidia.com/gpu.product", "")
    evidence: list[str] = []
    if label_strategy in ("time-slicing", "mps"):
        evidence.append(f"nvidia.com/gpu.sharing-strategy={label_strategy}")
    if replicas > 1:
        evidence.append(f"nvidia.com/gpu.replicas={replicas}")
    if product.endswith("-SHARED"):
        evidence.append(f"nvidia.com/gpu.product={product}")
    if physical and node.gpu_allocatable > physical:
        evidence.append(
            f"allocatable nvidia.com/gpu {node.gpu_allocatable} > nvidia.com/gpu.count {physical}"
        )
        if replicas == 1:
            replicas = node.gpu_allocatable // physical
    if label_strategy in ("time-slicing", "mps"):
        strategy = label_strategy
    else:
        strategy = "time-slicing" if evidence else "none"
    return SharingConfig(node.name, strategy, replicas, physical, node.gpu_allocatable, tuple(evidence))


def mig_resources(allocatable: Mapping[str, str]) -> dict[str, int]:
    """The node's allocatable MIG resources (mixed strategy), e.g. {'nvidia.com/mig-1g.10gb': 7}."""
    out: dict[str, int] = {}
    for key, value in allocatable.items():
        count = _int(str(value))
        if key.startswith("nvidia.com/mig-") and count:
            out[key] = count
    return out


@dataclass(frozen=True)
class MigProfile:
    """A MIG profile from its resource name: compute slices and memory in GB."""

    resource: str
    slices: int
    memory_gb: float


def parse_mig_profile(resource: str) -> MigProfile | None:
    """nvidia.com/mig-1g.10gb -> 1 slice, 10 GB (also the `2c.3g.40gb` and `+me` forms); None if unknown."""
    match = MIG_RESOURCE.match(resource)
    if not match:
        return None
    return MigProfile(resource, int(match.group(2)), float(match.group(3)))


def mig_memory_ok(profile: MigProfile, seen_mib: float) -> tuple[bool, float]:
    """Seen memory within MIG_MEMORY_TOLERANCE of the profile GB (1 MiB = 1.048576 MB), and the ratio."""
    ratio = seen_mib * 1.048576 / 1000 / profile.memory_gb
    return MIG_MEMORY_TOLERANCE[0] <= ratio <= MIG_MEMORY_TOLERANCE[1], round(ratio, 3)


# --- scheduling eligibility --------------------------------------------------------------------------


def tolerated(taints: Iterable[Mapping[str, Any]], tolerations: Iterable[Toleration]) -> bool:
    """True when every NoSchedule/NoExecute taint is tolerated (PreferNoSchedule never blocks)."""
    tols = list(tolerations)
    for taint in taints:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(
            t.key == taint.get("key")
            and t.effect == taint.get("effect")
            and (t.value is None or t.value == (taint.get("value") or ""))
            for t in tols
        ):
            return False
    return True


def eligible_gpu_nodes(nodes: Iterable[NodeFacts], settings: Settings) -> list[NodeFacts]:
    """GPU nodes a pod with the suite's nodeSelector and tolerations can land on, by name."""
    return sorted(
        (
            n
            for n in nodes
            if n.gpu_allocatable > 0
            and n.ready
            and not n.unschedulable
            and all(n.labels.get(k) == v for k, v in settings.node_selector.items())
            and tolerated(n.taints, settings.tolerations)
        ),
        key=lambda n: n.name,
    )


def gpu_request(pod: Mapping[str, Any], resource: str = GPU_RESOURCE) -> int:
    """What the scheduler counts for a pod: max(sum over containers, largest init container)."""
    spec = pod.get("spec") or {}

    def of(container: Mapping[str, Any]) -> int:
        res = container.get("resources") or {}
        value = (res.get("limits") or {}).get(resource) or (res.get("requests") or {}).get(resource) or 0
        return int(value)

    main = sum(of(c) for c in spec.get("containers") or [])
    init = max((of(c) for c in spec.get("initContainers") or []), default=0)
    return max(main, init)


@dataclass(frozen=True)
class GpuHolder:
    """A live pod that holds nvidia.com/gpu on a node; `run_id` when one of this suite's runs made it."""

    namespace: str
    name: str
    node: str
    gpus: int
    run_id: str | None = None


def gpu_holders(pods: Iterable[Mapping[str, Any]], node: str | None = None) -> list[GpuHolder]:
    """Bound, unfinished pods requesting GPUs (on `node`, or anywhere): what the scheduler subtracts."""
    found = []
    for pod in pods:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        bound = spec.get("nodeName")
        if not bound or (node is not None and bound != node):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        gpus = gpu_request(pod)
        if gpus:
            run_id = (meta.get("labels") or {}).get(RUN_ID_KEY)
            found.append(GpuHolder(meta.get("namespace", ""), meta.get("name", ""), bound, gpus, run_id))
    return found


def list_gpu_holders(core: Any) -> list[GpuHolder]:
    """Every live pod holding GPUs, cluster-wide, in one list call (finished pods filtered by the server)."""
    pods = api_json(
        core.list_pod_for_all_namespaces,
        field_selector=UNFINISHED,
        _request_timeout=REQUEST_TIMEOUT,
    )
    return gpu_holders(pods.get("items") or [])


def used_gpus_by_node(core: Any) -> dict[str, int]:
    """nvidia.com/gpu held by live pods, per node (what the scheduler subtracts from allocatable), in one
    list call however many nodes are asked about."""
    used: dict[str, int] = defaultdict(int)
    for holder in list_gpu_holders(core):
        used[holder.node] += holder.gpus
    return dict(used)


def privileged_gpu_pods(pods: Iterable[Mapping[str, Any]]) -> list[str]:
    """`ns/name (container)` of live pods that request a GPU and run a container privileged."""
    found = []
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") or not gpu_request(pod):
            continue
        meta = pod.get("metadata") or {}
        for container in (pod.get("spec") or {}).get("containers") or []:
            if ((container.get("securityContext") or {}).get("privileged")) is True:
                found.append(f"{meta.get('namespace')}/{meta.get('name')} ({container.get('name')})")
    return found


# --- what a probe document saw -------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSight:
    """The GPUs one probe run saw, by each of its three ways of looking."""

    nvml_uuids: tuple[str, ...]
    smi_uuids: tuple[str, ...]
    torch_devices: int
    device_nodes: tuple[str, ...]
    nvml_measured: bool = True  # False: the image has no nvidia-ml-py, so NVML's 0 says nothing

    @property
    def sees_gpu(self) -> bool:
        return bool(self.nvml_uuids or self.smi_uuids or self.torch_devices or self.device_nodes)

    @property
    def uuids(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.nvml_uuids) | set(self.smi_uuids)))

    def describe(self) -> str:
        if not self.sees_gpu:
            return "no GPU (NVML 0, nvidia-smi 0, torch 0, no /dev/nvidia<N>)"
        nvml = str(len(self.nvml_uuids)) if self.nvml_measured else "not measured"
        return (
            f"NVML {nvml}, nvidia-smi {len(self.smi_uuids)}, torch {self.torch_devices}, "
            f"devices {', '.join(self.device_nodes) or 'none'}; UUIDs {', '.join(self.uuids) or 'none'}"
        )


def gpu_sight(document: ProbeDocument | Mapping[str, Any]) -> GpuSight:
    """What GPUs the probe saw: NVML and nvidia-smi UUIDs, torch device count, /dev/nvidia<N> nodes."""
    doc = ProbeDocument.of(document)
    driver, smi, torch = doc.metrics("driver"), doc.metrics("nvidia_smi"), doc.metrics("torch_cuda")
    gpu_nodes = tuple(d for d in driver.get("device_nodes") or [] if re.fullmatch(r"/dev/nvidia\d+", str(d)))
    # Without NVML the driver layer lists the GPUs of /proc/driver/nvidia/gpus, which every container on a
    # GPU node can read (procfs is the host's): a name and UUID, not access. The H100 cluster run's pods
    # without a GPU request "saw" the H100 that way and isolation failed for nothing.
    nvml_measured = bool(driver.get("nvml_available", True))
    nvml_gpus = driver.get("gpus") or [] if nvml_measured else []
    return GpuSight(
        tuple(str(g.get("uuid")) for g in nvml_gpus if g.get("uuid")),
        tuple(str(g.get("uuid")) for g in smi.get("gpus") or [] if g.get("uuid")),
        int(torch.get("device_count") or 0),
        gpu_nodes,
        nvml_measured,
    )


@dataclass(frozen=True)
class EnvVarSharingFinding:
    """What the GPU-sharing workflow showed (examples/argo): does a step WITHOUT a GPU request, naming the GPU
    an earlier step was allocated in NVIDIA_VISIBLE_DEVICES, get that GPU?

    `verdict`: `leak` (it does: the isolation hole, a security finding), `isolated` (it does not: the trick
    fails here, the later steps run without a GPU), or `not assessable` (the allocating step itself saw no
    GPU, e.g. the testbed's FAKE GPUs: no GPU seen anywhere proves nothing about isolation).
    """

    verdict: str
    shared_value: str
    allocated: str
    steps: dict[str, str]
    reason: str
    diagnosis: Diagnosis | None = None

    def as_dict(self) -> dict[str, Any]:
        found = dataclasses.asdict(self)
        found["diagnosis"] = self.diagnosis.as_dict() if self.diagnosis else None
        return found


def envvar_sharing_finding(
    allocating: ProbeDocument | Mapping[str, Any], sharing: Mapping[str, ProbeDocument | Mapping[str, Any]]
) -> EnvVarSharingFinding:
    """Judge the workflow's probe documents with the isolation rules (gpu_sight, the isolation-envvar-leak
    diagnosis): `allocating` is the step that requested the GPU, `sharing` the later steps by name."""
    first = ProbeDocument.of(allocating)
    own = gpu_sight(first)
    docs = {name: ProbeDocument.of(doc) for name, doc in sharing.items()}
    sights = {name: gpu_sight(doc) for name, doc in docs.items()}
    values = {str(doc.env.get("NVIDIA_VISIBLE_DEVICES") or "") for doc in docs.values()}
    shared_value = ", ".join(sorted(values)) or "(unset)"
    steps = {name: sight.describe() for name, sight in sights.items()}
    allocated = own.describe()
    leaking = [name for name, sight in sights.items() if sight.sees_gpu]
    if leaking:
        name = leaking[0]
        seen = f"step {name}: {sights[name].describe()}"
        reason = (
            f"{', '.join(leaking)} saw a GPU without requesting one (NVIDIA_VISIBLE_DEVICES={shared_value})"
        )
        leak = diagnose_isolation_leak("visible-uuid", seen, dict(docs[name].env))
        return EnvVarSharingFinding("leak", shared_value, allocated, steps, reason, leak)
    if not own.sees_gpu:
        reason = (
            "the step that requested the GPU saw none itself (no NVML, nvidia-smi, torch device or "
            "/dev/nvidia<N>): later steps seeing none proves nothing; on the testbed the GPUs are FAKE"
        )
        return EnvVarSharingFinding("not assessable", shared_value, allocated, steps, reason)
    reason = (
        f"the allocating step saw {allocated}; the later steps, naming it in NVIDIA_VISIBLE_DEVICES "
        "without a request, saw none: the env-var sharing trick does not work on this cluster"
    )
    return EnvVarSharingFinding("isolated", shared_value, allocated, steps, reason)


def distinct_gpu_problems(sights: Mapping[str, GpuSight]) -> list[str]:
    """What is wrong when 1-GPU pods running at once on one node should each see one GPU of their own.

    Each pod: exactly one GPU by NVML and by nvidia-smi (the same UUID, no device node for another GPU;
    nvidia-smi alone in an image without nvidia-ml-py); no UUID in two pods. NVIDIA's DRA driver tests
    assert the same (distinct UUIDs for separate claims).
    """
    problems: list[str] = []
    owners: dict[str, list[str]] = {}
    for pod, sight in sights.items():
        nvml_count_wrong = sight.nvml_measured and len(sight.nvml_uuids) != 1
        if nvml_count_wrong or len(sight.smi_uuids) != 1:
            problems.append(f"{pod} sees {sight.describe()} (exactly 1 GPU expected)")
        elif sight.nvml_measured and sight.nvml_uuids != sight.smi_uuids:
            problems.append(f"{pod}: NVML sees {sight.nvml_uuids[0]}, nvidia-smi {sight.smi_uuids[0]}")
        if len(sight.device_nodes) > 1:
            problems.append(
                f"{pod} has device nodes of {len(sight.device_nodes)} GPUs: {', '.join(sight.device_nodes)}"
            )
        for uuid in sight.uuids:
            owners.setdefault(uuid, []).append(pod)
    problems += [
        f"{uuid} is seen by {' and '.join(pods)}" for uuid, pods in sorted(owners.items()) if len(pods) > 1
    ]
    return problems


def is_replayed(document: ProbeDocument | Mapping[str, Any], pod_name: str) -> bool:
    """A document that names no pod, or another pod, was not measured by this pod (e.g. a recording)."""
    return ProbeDocument.of(document).identity.get("pod_name") != pod_name


# --- time-slicing ------------------------------------------------------------------------------------


def run_window(document: ProbeDocument | Mapping[str, Any]) -> tuple[float, float]:
    """(start, end) epoch seconds of a probe run; started_at has 1 s resolution, so the end gets +1 s."""
    doc = ProbeDocument.of(document)
    started = dt.datetime.strptime(doc.started_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    start = started.timestamp()
    return start, start + 1.0 + doc.duration_s


def common_window_s(windows: list[tuple[float, float]]) -> float:
    """Seconds during which all runs were alive at once (<= 0: they were not all running together)."""
    return min(end for _s, end in windows) - max(start for start, _e in windows)


@dataclass(frozen=True)
class Share:
    """One replica's measured throughput as a share of the exclusive figure."""

    pod: str
    uuid: str
    tflops: float
    share: float
    expected: float
    ok: bool


def shares(exclusive_tflops: float, replicas: list[tuple[str, str, float]]) -> list[Share]:
    """Each (pod, uuid, tflops) against 1/n, n = pods that measured on the same UUID (SHARE_TOLERANCE)."""
    per_uuid: dict[str, int] = {}
    for _pod, uuid, _t in replicas:
        per_uuid[uuid] = per_uuid.get(uuid, 0) + 1
    out = []
    for pod, uuid, tflops in replicas:
        expected = 1.0 / per_uuid[uuid]
        share = tflops / exclusive_tflops if exclusive_tflops > 0 else 0.0
        ok = SHARE_TOLERANCE[0] * expected <= share <= SHARE_TOLERANCE[1] * expected
        out.append(Share(pod, uuid, tflops, round(share, 3), round(expected, 3), ok))
    return out


# --- MPS memory limit ----------------------------------------------------------------------------------

_MPS_START = re.compile(r'\{\s*"schema"\s*:\s*"' + re.escape(mps_check.SCHEMA) + '"')
MPS_FIELDS: dict[str, tuple[type, ...]] = {
    "started_at": (str,),
    "limit_mib": (int, type(None)),
    "active_thread_percentage": (int, float, type(None)),
    "allocated_within_limit_mib": (int,),
    "beyond_limit_allocation_failed": (bool,),
    "beyond_error": (str, type(None)),
    "device_total_mib": (int, type(None)),
    "error": (str, type(None)),
}


def read_mps_check(raw: str, where: str = "the log") -> tuple[dict[str, Any] | None, str | None]:
    """The mps-check document in the log from `where` (noise before and after tolerated), or why not."""
    decoder = json.JSONDecoder()
    problem = None
    for match in _MPS_START.finditer(raw):
        try:
            doc, _end = decoder.raw_decode(raw, match.start())
        except json.JSONDecodeError as exc:
            problem = problem or f"the document at character {match.start()} is not valid JSON ({exc.msg})"
            continue
        if not str(doc.get("schema_version", "")).startswith("1."):
            return None, f"{where}: schema_version {doc.get('schema_version')!r}, expected 1.x"
        wrong = [
            key
            for key, types in MPS_FIELDS.items()
            if key not in doc
            or not isinstance(doc[key], types)
            or (isinstance(doc[key], bool) and bool not in types)
        ]
        if wrong:
            return None, f"{where}: the mps-check document lacks or mistypes {', '.join(wrong)}"
        return doc, None
    if problem:
        return None, f"{where}: {problem}"
    head = raw.strip()[:120]
    return None, f"no {mps_check.SCHEMA} document in {where} ({len(raw)} characters, starting with {head!r})"


@dataclass(frozen=True)
class MpsLimitVerdict:
    """What one mps-check document says: "pass", "fail" (limit not enforced) or "skip" (could not check)."""

    outcome: str
    summary: str


def mps_limit_verdict(doc: Mapping[str, Any]) -> MpsLimitVerdict:
    """The decision on one mps-check document; `error` means the check could not run (MPS not active)."""
    limit, seen = doc.get("limit_mib"), doc.get("allocated_within_limit_mib")
    threads = doc.get("active_thread_percentage")
    said = (
        f"active thread percentage {threads}"
        if threads is not None
        else f"{mps_check.THREADS_ENV} unset in the client: the control daemon's default applies"
    )
    if doc.get("error"):
        return MpsLimitVerdict("skip", f"the check could not run: {doc['error']} ({said})")
    if not doc.get("beyond_limit_allocation_failed"):
        return MpsLimitVerdict(
            "fail",
            f"limit {limit} MiB, {seen} MiB allocated within it, then an allocation taking the client "
            f"{mps_check.BEYOND_MIB} MiB past it succeeded ({said})",
        )
    return MpsLimitVerdict(
        "pass",
        f"limit {limit} MiB: {seen} MiB allocated within it, {mps_check.BEYOND_MIB} MiB past it refused "
        f"({str(doc.get('beyond_error')).split('. ')[0]}); {said}",
    )


# --- pods --------------------------------------------------------------------------------------------


# gpu_perf measures for this long in scenario pods: N pods sharing one GPU must overlap while they measure
# (the default ~0.1 s windows of N processes barely overlap: see tests/data/recordings/sharing.md).
SHARED_PERF_SECONDS = 4.0


def probe_args(layers: str) -> list[str]:
    """The probe's arguments for a scenario: only the layers it needs, gpu_perf long enough to overlap."""
    args = ["--json", "--layers", layers]
    if "gpu_perf" in layers.split(","):
        args += ["--perf-seconds", f"{SHARED_PERF_SECONDS:g}"]
    return args


def scenario_pod(
    settings: Settings,
    run_id: str,
    namespace: str,
    name: str,
    configmap: str,
    items: list[dict[str, str]],
    *,
    scenario: str,
    layers: str,
    gpus: int = 1,
    node: str | None = None,
    env: Mapping[str, str] | None = None,
    resource: str = GPU_RESOURCE,
    synced_start: float | None = None,
    script: Path | None = None,
) -> dict[str, Any]:
    """A probe pod (build_probe_pod: least privilege, the suite's tolerations) for one scenario step.

    `gpus=0` drops the GPU request; `resource` requests e.g. a MIG slice instead of nvidia.com/gpu;
    `node` pins it with nodeSelector kubernetes.io/hostname (still through the scheduler, never nodeName);
    `synced_start` runs the probe through sync_start.py, starting at that epoch second; `script` runs that
    standalone script (its text as `python3 -c`, e.g. MPS_CHECK) instead of the probe, `layers` unused.
    """
    pod = build_probe_pod(
        dataclasses.replace(settings, gpus=max(gpus, 1)), run_id, namespace, name, configmap, items
    )
    pod["metadata"]["annotations"][SCENARIO_ANNOTATION] = scenario
    spec = pod["spec"]
    if node:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), "kubernetes.io/hostname": node}
    container = spec["containers"][0]
    for key in ("limits", "requests"):
        container["resources"][key].pop(GPU_RESOURCE, None)
        if gpus:
            container["resources"][key][resource] = str(gpus)
    if script is not None:
        container["command"] = ["python3", "-c", script.read_text(encoding="utf-8")]
    elif synced_start is None:
        container["command"] = ["python3", "-m", "gpu_probe", *probe_args(layers)]
    else:
        container["command"] = ["python3", "-c", SYNC_START.read_text(encoding="utf-8"), *probe_args(layers)]
        container["env"].append({"name": START_AT_ENV, "value": f"{synced_start:.1f}"})
    for key, value in (env or {}).items():
        container["env"].append({"name": key, "value": value})
    return pod


def add_shared_container(pod: dict[str, Any], name: str, layers: str) -> dict[str, Any]:
    """A second probe container in the same pod, requesting no GPU (the multi-container scenario)."""
    first = pod["spec"]["containers"][0]
    other = copy.deepcopy(first)
    other["name"] = name
    other["command"] = ["python3", "-m", "gpu_probe", *probe_args(layers)]
    for key in ("limits", "requests"):
        other["resources"][key] = {
            k: v for k, v in other["resources"][key].items() if not k.startswith("nvidia.com/")
        }
    other["resources"].pop("claims", None)  # --allocation dra: the claim is the first container's only
    pod["spec"]["containers"].append(other)
    return pod


def holder_pod(
    settings: Settings, run_id: str, namespace: str, name: str, configmap: str, node: str, hold_s: int
) -> dict[str, Any]:
    """A pod that only holds one nvidia.com/gpu on `node` (sleeps), least privilege like the probe pod."""
    pod = build_probe_pod(dataclasses.replace(settings, gpus=1), run_id, namespace, name, configmap, [])
    pod["metadata"]["labels"] = run_labels(run_id, "holder")
    pod["metadata"]["annotations"][SCENARIO_ANNOTATION] = "exhaustion"
    spec = pod["spec"]
    spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), "kubernetes.io/hostname": node}
    spec["activeDeadlineSeconds"] = hold_s + 60
    spec.pop("volumes", None)
    container = spec["containers"][0]
    container.pop("volumeMounts", None)
    container["name"] = "holder"
    container["command"] = ["python3", "-c", f"import time; time.sleep({hold_s})"]
    container["resources"] = {
        "requests": {**HOLDER_REQUESTS, GPU_RESOURCE: "1"},
        "limits": {"memory": HOLDER_REQUESTS["memory"], GPU_RESOURCE: "1"},
    }
    return pod


class ScenarioPods(PodSession):
    """One scenario's session (namespace `gpu-acceptance-<run id>-<suffix>`, probe ConfigMap, pods), with
    the scenario's pod builder and the GPU accounting of a node."""

    def __init__(
        self,
        connection: Connection,
        settings: Settings,
        run_id: str,
        suffix: str,
        progress: Progress,
        allocation: str = "device-plugin",
    ) -> None:
        super().__init__(connection, settings, run_id, suffix=suffix, progress=progress)
        self.allocation = allocation
        self.templates: set[str] = set()

    def scenario_pod(self, name: str, **kwargs: Any) -> dict[str, Any]:
        """`scenario_pod` in this session's namespace, mounting its probe ConfigMap. With --allocation dra a
        whole-GPU request becomes a claim from this session's ResourceClaimTemplate for that count (made on
        first use); a MIG or shared-GPU resource stays as the device plugin advertises it."""
        pod = scenario_pod(
            self.settings, self.run_id, self.namespace, name, self.configmap_name, self.items, **kwargs
        )
        gpus = int(kwargs.get("gpus", 1))
        if self.allocation == "dra" and gpus and kwargs.get("resource", GPU_RESOURCE) == GPU_RESOURCE:
            template = f"{dra.claim_template_name(self.run_id)}-{gpus}g"
            if template not in self.templates:
                self.create_claim_template(dra.claim_template(self.run_id, self.namespace, gpus, template))
                self.templates.add(template)
            dra.use_claim(pod, template)
        return pod

    def holder_pod(self, name: str, node: str, hold_s: int) -> dict[str, Any]:
        """`holder_pod` in this session's namespace."""
        return holder_pod(self.settings, self.run_id, self.namespace, name, "", node, hold_s)

    def used_gpus(self, node: str) -> int:
        """nvidia.com/gpu held on `node` by live pods (what the scheduler subtracts from allocatable)."""
        pods = api_json(
            self.core.list_pod_for_all_namespaces,
            field_selector=f"spec.nodeName={node}",
            _request_timeout=REQUEST_TIMEOUT,
        )
        return sum(h.gpus for h in gpu_holders(pods.get("items") or [], node))

    def used_gpus_by_node(self) -> dict[str, int]:
        """`used_gpus` of every node at once: one list call (asking per node is one call per node)."""
        return used_gpus_by_node(self.core)

    def collect(
        self,
        name: str,
        layer: str,
        containers: Iterable[str] = ("probe",),
        read: Callable[[str, str], tuple[Any, str | None]] = read_document,
    ) -> tuple[PodRun, dict[str, Any]]:
        """Wait for an already created scenario pod and read each container's document with `read(log,
        where) -> (document, error)`; a pod that did not run, or a log without a document, fails the test
        with the diagnosis of `layer`."""
        containers = tuple(containers)
        result, logs = self.run_pod(name, containers)
        where = f"pod {self.namespace}/{name} on {result.node_name or '?'}"
        documents: dict[str, Any] = {}
        for container in containers:
            document, error = read(logs[container], where) if container in logs else (None, None)
            if document is None:
                failure = result.failure
                if failure is not None:
                    fail(
                        diagnose_pod_did_not_run(layer, where, failure.kind, failure.reason, failure.message)
                    )
                fail(
                    diagnose_pod_did_not_run(
                        layer, f"{where}, container {container}", "output", "", error or "no log"
                    )
                )
            documents[container] = document
        return result, documents


def holder_verdict(state: PodState) -> str | None:
    """Running = holds its GPU; a known failure (classify_pod) or a scheduling refusal ends the wait."""
    if state.phase == "Running":
        return "running"
    verdict = classify_pod(state.pod, state.events)
    if verdict.state == "fail" and verdict.failure is not None:
        return f"{verdict.failure.kind}: {verdict.failure.reason}: {verdict.failure.message}"
    if state.phase in ("Succeeded", "Failed"):
        return f"ended: {state.phase}"
    return None


def extra_verdict(state: PodState) -> str | None:
    """The one-too-many pod: Unschedulable (with the scheduler's message) or bound to a node."""
    message = state.unschedulable_message()
    if message is not None:
        return f"unschedulable: {message}"
    if state.node:
        return f"scheduled: {state.node}"
    return None
