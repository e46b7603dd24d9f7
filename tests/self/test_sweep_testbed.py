"""The fleet sweep (`--all-nodes`), run as a user runs it, against the live testbed.

Real apiserver and scheduler: each node's probe pod is pinned by nodeSelector on the hostname label and
placed by the scheduler. A node annotated `testbed.k8s-gpu-acceptance.io/recording=cpu` makes every probe
pod on it print the CPU host's recording (a node whose GPU is not visible): that node, and only that node,
must fail, and CI's JUnit must say which.
"""

from __future__ import annotations

import itertools
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

RECORDING = "testbed.k8s-gpu-acceptance.io/recording"
PROBE_LAYERS = ("driver", "nvidia_smi", "torch_cuda", "gpt2", "gpu_perf")
DEFAULT_GPU_NODES = {"gpu-node-1", "gpu-node-8"}  # the tolerated ones (nvidia.com/gpu taint on gpu-node-8)
SCENARIO_NODES = {"gpu-node-ts", "gpu-node-mps", "gpu-node-mig"}


def nodes_of(run) -> dict[str, dict]:
    return {entry["name"]: entry for entry in run.report["nodes"]}


def junit_cases(run) -> dict[str, str]:
    """testcase name -> passed | failed | skipped (blocked layers are skips with the BLOCKED reason)."""
    root = ET.parse(run.report_dir / "junit.xml").getroot()
    out = {}
    for case in root.iter("testcase"):
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                state = "failed"
            elif child.tag == "skipped":
                state = "skipped"
        out[case.get("name")] = state
    return out


@pytest.fixture
def bad_node(core) -> Iterator[str]:
    """gpu-node-8's probe pods print the CPU recording for the length of the test."""
    name = "gpu-node-8"
    core.patch_node(name, {"metadata": {"annotations": {RECORDING: "cpu"}}})
    try:
        yield name
    finally:
        core.patch_node(name, {"metadata": {"annotations": {RECORDING: None}}})


def test_sweep_reports_every_tolerated_gpu_node_and_lists_the_others(run_suite):
    run = run_suite("--all-nodes")
    assert run.ret == 0, run.output
    nodes = nodes_of(run)
    assert {n for n, e in nodes.items() if e["status"] == "passed"} == DEFAULT_GPU_NODES, nodes
    for name in SCENARIO_NODES:  # tainted for their scenario: listed with the reason, never dropped
        assert nodes[name]["status"] == "not-probed" and "untolerated taint" in nodes[name]["reason"]
    assert "cpu-node" not in nodes
    for name in DEFAULT_GPU_NODES:
        entry = nodes[name]
        assert [layer["name"] for layer in entry["layers"]] == ["scheduling", *PROBE_LAYERS]
        assert entry["figures"]["gpu"] == "NVIDIA H100 80GB HBM3"
    cases = junit_cases(run)
    for name in DEFAULT_GPU_NODES:
        assert sum(1 for case in cases if case.endswith(f"[{name}]")) == 1 + len(PROBE_LAYERS), cases
    # node by node: each node's layers run together, bottom-up (its pod and document are set up once)
    ran = [case.rsplit("[", 1)[1].rstrip("]") for case in cases if case.endswith("]")]
    assert ran == [node for node, _ in itertools.groupby(ran) for _ in range(1 + len(PROBE_LAYERS))], ran
    # the cluster-wide layers run once (the checks that are not layers, distinct GPUs and accelerator
    # metrics, are not per node either)
    not_layers = ("test_one_gpu_pods_at_once", "test_dcgm_exporter")
    assert sum(1 for case in cases if "[" not in case and not case.startswith(not_layers)) == 2, cases
    html = (run.report_dir / "report.html").read_text()
    assert 'id="gpu-acceptance-nodes"' in html


def test_one_bad_node_fails_only_its_own_rows(run_suite, bad_node):
    run = run_suite("--all-nodes", "--max-parallel=1")
    assert run.ret == 1, run.output
    nodes = nodes_of(run)
    assert nodes[bad_node]["status"] == "failed", nodes[bad_node]
    assert nodes[bad_node]["reason"].startswith("driver: ")
    assert nodes["gpu-node-1"]["status"] == "passed", nodes["gpu-node-1"]
    assert run.report["nodes"][0]["name"] == bad_node  # failures first
    cases = junit_cases(run)
    failed = sorted(case for case, state in cases.items() if state == "failed")
    assert failed == [case for case in failed if case.endswith(f"[{bad_node}]")] and failed, cases
    assert all(state == "passed" for case, state in cases.items() if case.endswith("[gpu-node-1]")), cases


def test_a_really_failing_node_fails_only_its_own_rows(run_suite, testbed):
    """The testbed's real node (real kubelet and containerd, fake GPUs: allocated, no device injected) really
    runs its probe pod, and its driver layer fails for that real reason; the kwok nodes pass."""
    real = getattr(testbed, "real_node", None)
    if not real:
        pytest.skip("this testbed has no real node (testbed/node.py)")
    run = run_suite(
        "--all-nodes",
        f"--image={testbed.probe_image}",
        "--toleration=nvidia.com/gpu:NoSchedule",
        "--toleration=testbed.k8s-gpu-acceptance.io/real-node=true:NoSchedule",
    )
    assert run.ret == 1, run.output
    nodes = nodes_of(run)
    assert nodes[real]["status"] == "failed" and nodes[real]["reason"].startswith("driver: "), nodes[real]
    assert {n for n, e in nodes.items() if e["status"] == "passed"} == DEFAULT_GPU_NODES, nodes
    cases = junit_cases(run)
    failed = [case for case, state in cases.items() if state == "failed"]
    assert failed and all(case.endswith(f"[{real}]") for case in failed), failed


def test_label_selector_and_idle_only_choose_the_nodes(run_suite):
    run = run_suite("--node-label-selector=kubernetes.io/hostname in (gpu-node-1,gpu-node-ts)", "--idle-only")
    assert run.ret == 0, run.output
    nodes = nodes_of(run)
    assert set(nodes) == {"gpu-node-1", "gpu-node-ts"}, nodes
    assert nodes["gpu-node-1"]["status"] == "passed" and nodes["gpu-node-ts"]["status"] == "not-probed"
    sweep = run.report["sweep"]
    assert sweep["max_parallel"] == 50 and sweep["idle_only"] is True, sweep


def test_label_nodes_writes_the_verdict_onto_each_probed_node(run_suite, core):
    try:
        run = run_suite("--node-label-selector=kubernetes.io/hostname=gpu-node-1", "--label-nodes")
        assert run.ret == 0, run.output
        node = core.read_node("gpu-node-1")
        assert node.metadata.labels["k8s-gpu-acceptance/verdict"] == "passed"
        detail = json.loads(node.metadata.annotations["k8s-gpu-acceptance/last-run"])
        assert detail["run_id"] == run.run_id and detail["failed_layers"] == []
    finally:
        core.patch_node(
            "gpu-node-1",
            {
                "metadata": {
                    "labels": {"k8s-gpu-acceptance/verdict": None},
                    "annotations": {"k8s-gpu-acceptance/last-run": None},
                }
            },
        )
