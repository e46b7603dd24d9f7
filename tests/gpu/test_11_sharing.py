"""Sharing: several containers of one pod, time-slicing, MPS and MIG, each measured where configured.

Not a layer of the chain; each test skips with the reason when the cluster has no such configuration.
Time-slicing runs the probe alone on a time-sliced node (the exclusive figure), then `replicas` probe pods
at one shared instant (k8s_gpu_acceptance/sync_start.py) and checks they ran at once, on one UUID, each
with a share of 0.5x..1.5x of 1/N of the exclusive bf16 TFLOP/s. MPS runs k8s_gpu_acceptance/mps_check.py
as a client pod with CUDA_MPS_PINNED_DEVICE_MEM_LIMIT set: allocating within the limit must work, past it
must fail.
"""

import time

import pytest
from kubernetes import client

from k8s_gpu_acceptance.checks import fail
from k8s_gpu_acceptance.cluster import REQUEST_TIMEOUT
from k8s_gpu_acceptance.diagnosis import (
    diagnose_mig_memory,
    diagnose_mig_scheduling,
    diagnose_mps_memory_limit,
    diagnose_mps_no_gpu,
    diagnose_multi_container,
    diagnose_time_slicing,
)
from k8s_gpu_acceptance.mps_check import LIMIT_ENV
from k8s_gpu_acceptance.probe import read_document
from k8s_gpu_acceptance.sharing import (
    MAX_REPLICAS,
    MPS_CHECK,
    MPS_FIELDS,
    MPS_LIMIT,
    add_shared_container,
    common_window_s,
    detect_sharing,
    eligible_gpu_nodes,
    gpu_sight,
    is_replayed,
    mig_memory_ok,
    mig_resources,
    mps_limit_verdict,
    parse_mig_profile,
    read_mps_check,
    run_window,
    shares,
    tolerated,
)

pytestmark = [pytest.mark.gpu, pytest.mark.sharing]
# The time-slicing, MPS and MIG checks evidence AI Conformance gpu_sharing (several containers of one pod are
# not sharing between workloads).
GPU_SHARING = pytest.mark.ai_conformance("gpu_sharing")
START_LEAD_S = 40  # replicas start this long after creation: pull (cached by the exclusive run) + import


@pytest.fixture(scope="module")
def sharing_pods(request, open_scenario):
    return open_scenario(request, "share")


def _run(pods, pod, containers=("probe",), read=read_document):
    """Create one scenario pod, wait, and return its documents per container (fails with a diagnosis).

    `read(log, where) -> (document, error)`: the probe's document, or e.g. read_mps_check's.
    """
    pods.create_pod(pod)
    return pods.collect(pod["metadata"]["name"], "sharing", containers, read)


def test_containers_of_one_pod_on_one_gpu(record_scenario, sharing_pods, cluster_facts, gpu_settings):
    nodes = eligible_gpu_nodes(cluster_facts.nodes, gpu_settings)
    if not nodes:
        pytest.skip("multi-container: no Ready GPU node that the suite's pods may land on")
    name = sharing_pods.name("gpu-multi")
    pod = sharing_pods.scenario_pod(name, scenario="multi-container", layers="driver,nvidia_smi")
    add_shared_container(pod, "shared", "driver,nvidia_smi")
    result, docs = _run(sharing_pods, pod, ("probe", "shared"))
    gpu, other = gpu_sight(docs["probe"]), gpu_sight(docs["shared"])
    seen = {"probe (requests nvidia.com/gpu)": list(gpu.uuids), "shared (no request)": list(other.uuids)}
    mode = (
        "not shared: only the requesting container sees the GPU"
        if not other.sees_gpu
        else "shared: the other container sees the same GPU"
        if set(other.uuids) <= set(gpu.uuids)
        else "foreign GPU"
    )
    record_scenario("multi_container", {"node": result.node_name, "uuids_seen": seen, "mode": mode})
    if not gpu.sees_gpu or mode == "foreign GPU":
        fail(diagnose_multi_container("probe", gpu.describe(), "shared", other.describe()))


def _time_sliced(cluster_facts, settings):
    configs = [detect_sharing(n) for n in cluster_facts.gpu_nodes]
    sliced = [c for c in configs if c.strategy == "time-slicing"]
    if not sliced:
        pytest.skip(
            "time-slicing: no GPU node shows it (labels nvidia.com/gpu.sharing-strategy=time-slicing, "
            "nvidia.com/gpu.replicas>1, nvidia.com/gpu.product *-SHARED, "
            "or allocatable > nvidia.com/gpu.count) "
            f"among {len(configs)} GPU node(s)"
        )
    usable = {n.name for n in eligible_gpu_nodes(cluster_facts.nodes, settings)}
    for config in sliced:
        if config.node in usable:
            return config
    taints = {n.name: n.taints for n in cluster_facts.gpu_nodes}
    pytest.skip(
        "time-slicing: the time-sliced node(s) "
        + ", ".join(f"{c.node} (taints {taints[c.node]})" for c in sliced)
        + " do not accept the suite's pods: pass --toleration / --node-selector for them"
    )


@GPU_SHARING
def test_time_slicing_replicas_share_one_gpu(record_scenario, sharing_pods, cluster_facts, gpu_settings):
    config = _time_sliced(cluster_facts, gpu_settings)
    n = min(config.replicas, MAX_REPLICAS, config.allocatable)
    layers = "driver,gpu_perf"
    excl_name = sharing_pods.name("gpu-ts-excl")
    excl_pod = sharing_pods.scenario_pod(
        excl_name, scenario="timeslice-exclusive", layers=layers, node=config.node
    )
    _result, excl_docs = _run(sharing_pods, excl_pod)
    exclusive = excl_docs["probe"].layer("gpu_perf").metric("bf16_tflops")
    if not exclusive:
        fail(
            diagnose_time_slicing(
                config.node, "no-figure", "the exclusive run measured no bf16 TFLOP/s", n, config.evidence
            )
        )
    start_at = int(time.time() + START_LEAD_S) + 0.5  # mid-second: started_at (1 s resolution) agrees
    names = [sharing_pods.name(f"gpu-ts-{i}") for i in range(n)]
    for i, name in enumerate(names):
        sharing_pods.create_pod(
            sharing_pods.scenario_pod(
                name,
                scenario=f"timeslice-{n}-{i}",
                layers=layers,
                node=config.node,
                synced_start=start_at,
            )
        )
    docs = {name: sharing_pods.collect(name, "sharing")[1]["probe"] for name in names}
    figures = []
    for name, doc in docs.items():
        perf = doc.metrics("gpu_perf")
        if not perf.get("bf16_tflops"):
            fail(
                diagnose_time_slicing(
                    config.node, "no-figure", f"{name}: gpu_perf measured nothing", n, config.evidence
                )
            )
        uuids = gpu_sight(doc).uuids
        figures.append((name, uuids[0] if uuids else "?", float(perf["bf16_tflops"])))
    overlap = common_window_s([run_window(doc) for doc in docs.values()])
    measured = shares(float(exclusive), figures)
    entry = {
        "node": config.node,
        "detected_by": list(config.evidence),
        "replicas": n,
        "exclusive_bf16_tflops": exclusive,
        "all_running_together_s": round(overlap, 1),
        "shares": [
            {
                "pod": s.pod,
                "uuid": s.uuid,
                "tflops": s.tflops,
                "share": s.share,
                "expected": s.expected,
                "ok": s.ok,
            }
            for s in measured
        ],
        "tolerance": "0.5x..1.5x of 1/N",
    }
    record_scenario("time_slicing", entry)
    if overlap <= 0:
        fail(
            diagnose_time_slicing(
                config.node, "not-concurrent", f"no instant when all {n} ran", n, config.evidence
            )
        )
    distinct = sorted({uuid for _n, uuid, _t in figures})
    if config.physical == 1 and len(distinct) > 1:
        fail(diagnose_time_slicing(config.node, "uuids", ", ".join(distinct), n, config.evidence))
    bad = [s for s in measured if not s.ok]
    if bad:
        detail = "; ".join(
            f"{s.pod}: {s.tflops:g} TFLOP/s = {s.share:.2f} of exclusive {exclusive:g} "
            f"(expected {s.expected:.2f})"
            for s in bad
        )
        fail(diagnose_time_slicing(config.node, "share", detail, n, config.evidence))
    print(
        f"time-slicing on {config.node}: {n} replicas on {', '.join(distinct)}, shares "
        + ", ".join(f"{s.share:.2f}" for s in measured)
        + f" of exclusive {exclusive:g} TFLOP/s (expected {1 / n:.2f} each)"
    )


def _mps_config(cluster_facts, settings):
    """The first MPS node, when it accepts the suite's pods (else skip with the reason)."""
    for node in cluster_facts.gpu_nodes:
        config = detect_sharing(node)
        if config.strategy == "mps":
            break
    else:
        pytest.skip("mps: no GPU node has nvidia.com/gpu.sharing-strategy=mps")
    if config.node not in {n.name for n in eligible_gpu_nodes(cluster_facts.nodes, settings)}:
        pytest.skip(f"mps: node {config.node} does not accept the suite's pods (taints/selector)")
    return config


@GPU_SHARING
def test_mps_client_sees_its_share(record_scenario, sharing_pods, cluster_facts, gpu_settings):
    config = _mps_config(cluster_facts, gpu_settings)
    name = sharing_pods.name("gpu-mps")
    pod = sharing_pods.scenario_pod(name, scenario="mps", layers="driver,torch_cuda", node=config.node)
    _result, docs = _run(sharing_pods, pod)
    sight = gpu_sight(docs["probe"])
    devices = docs["probe"].layer("torch_cuda").metric("devices", [])
    record_scenario(
        "mps",
        {
            "node": config.node,
            "replicas": config.replicas,
            "expected_active_thread_percentage": round(100 / config.replicas, 1),
            "sees": sight.describe(),
            "torch_total_memory_mib": [d.get("total_memory_mib") for d in devices],
        },
    )
    if not sight.sees_gpu:
        fail(diagnose_mps_no_gpu(config.node, sight.describe()))


@GPU_SHARING
def test_mps_client_cannot_exceed_memory_limit(record_scenario, sharing_pods, cluster_facts, gpu_settings):
    """k8s_gpu_acceptance/mps_check.py in a pod on the MPS node: within the pinned memory limit, then
    past it."""
    config = _mps_config(cluster_facts, gpu_settings)
    name = sharing_pods.name("gpu-mps-limit")
    pod = sharing_pods.scenario_pod(
        name,
        scenario="mps-limit",
        layers="",
        node=config.node,
        env={LIMIT_ENV: MPS_LIMIT},
        script=MPS_CHECK,
    )
    result, docs = _run(sharing_pods, pod, read=read_mps_check)
    doc = docs["probe"]
    where = f"pod {sharing_pods.namespace}/{name} on {result.node_name or '?'}"
    verdict = mps_limit_verdict(doc)
    record_scenario(
        "mps.memory_limit",
        {
            "node": config.node,
            "limit_env": MPS_LIMIT,
            **{key: doc[key] for key in MPS_FIELDS},
            "verdict": verdict.outcome,
        },
    )
    if verdict.outcome == "skip":
        pytest.skip(f"mps: {where}: {verdict.summary}")
    if verdict.outcome == "fail":
        fail(diagnose_mps_memory_limit(config.node, MPS_LIMIT, verdict.summary))
    print(f"mps memory limit on {config.node}: {verdict.summary}")


@pytest.fixture(scope="module")
def mig_run(request, sharing_pods, cluster_connection, cluster_facts, gpu_settings):
    """One pod given one MIG slice, through the real scheduler."""
    facts = {n.name: n for n in cluster_facts.nodes}
    nodes = client.CoreV1Api(cluster_connection.api).list_node(_request_timeout=REQUEST_TIMEOUT).items
    for node in sorted(nodes, key=lambda n: n.metadata.name):
        slices = mig_resources(node.status.allocatable or {})
        fact = facts.get(node.metadata.name)
        if slices and fact is not None and tolerated(fact.taints, gpu_settings.tolerations):
            resource = sorted(slices)[0]
            break
    else:
        pytest.skip("mig: no node that accepts the suite's pods advertises nvidia.com/mig-* resources")
    name = sharing_pods.name("gpu-mig")
    profile = parse_mig_profile(resource)
    pod = sharing_pods.scenario_pod(
        name,
        scenario=f"mig-{resource.removeprefix('nvidia.com/mig-')}",
        layers="driver,nvidia_smi,torch_cuda",
        node=node.metadata.name,
        resource=resource,
    )
    result, docs = _run(sharing_pods, pod)
    return node.metadata.name, resource, profile, result, docs["probe"]


@GPU_SHARING
def test_mig_slice_is_scheduled(record_scenario, mig_run):
    node, resource, _profile, result, _doc = mig_run
    record_scenario(
        "mig",
        {"node": node, "resource": resource, "ran_on": result.node_name, "scheduled_by": result.scheduled_by},
    )
    if result.node_name != node or result.scheduled_by is None:
        fail(diagnose_mig_scheduling(resource, result.node_name, result.scheduled_by))


@GPU_SHARING
def test_mig_memory_matches_profile(record_scenario, mig_run):
    _node, resource, profile, result, doc = mig_run
    if profile is None:
        pytest.skip(f"mig: {resource} does not name a profile this suite can parse (<N>g.<M>gb)")
    if is_replayed(doc, result.name):
        pytest.skip(
            f"mig: the probe document of {result.name} was not measured by that pod (identity.pod_name="
            f"{doc.identity.get('pod_name')!r}): a replayed recording; there is no real MIG "
            "recording because MIG cannot be enabled on the H100 host at hand"
        )
    devices = doc.layer("torch_cuda").metric("devices", [])
    seen = float(devices[0].get("total_memory_mib") or 0) if devices else 0.0
    ok, ratio = mig_memory_ok(profile, seen)
    record_scenario(
        "mig.memory",
        {"resource": resource, "seen_mib": seen, "profile_gb": profile.memory_gb, "ratio": ratio},
    )
    if not ok:
        fail(diagnose_mig_memory(resource, seen, profile.memory_gb, ratio))
