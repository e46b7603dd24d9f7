"""The fleet sweep's rules: node selection, bounded concurrency, per-node verdicts, report shapes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from gpu_probe.document import parse_document

from k8s_gpu_acceptance import sweep
from k8s_gpu_acceptance.cluster import NodeFacts
from k8s_gpu_acceptance.sweep import NodeRow, Queue, Skipped

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"
GPU_TOLERATION = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
SCENARIO_TAINT = {"key": "testbed.k8s-gpu-acceptance.io/scenario", "value": "mig", "effect": "NoSchedule"}


def node(name, gpus=1, allocatable=None, ready=True, cordoned=False, taints=(), labels=None, hostname=None):
    return NodeFacts(
        name=name,
        ready=ready,
        unschedulable=cordoned,
        gpu_capacity=gpus,
        gpu_allocatable=gpus if allocatable is None else allocatable,
        labels={"kubernetes.io/hostname": hostname or name, **(labels or {})},
        taints=list(taints),
    )


def select(nodes, **kw):
    args = {"node_selector": {}, "tolerations": GPU_TOLERATION, "gpus": 1, "used_gpus": {}, **kw}
    return sweep.select_nodes(nodes, **args)


def test_default_testbed_nodes():
    nodes = [
        node("gpu-node-8", 8, taints=[GPU_TAINT]),
        node("gpu-node-1"),
        node("cpu-node", 0),
        node("gpu-node-mig", taints=[SCENARIO_TAINT]),
    ]
    targets, skipped = select(nodes)
    assert [(t.node, t.free) for t in targets] == [("gpu-node-1", 1), ("gpu-node-8", 8)]
    assert skipped == [
        Skipped(
            "gpu-node-mig",
            "not-probed",
            "untolerated taint testbed.k8s-gpu-acceptance.io/scenario: mig (to include it: "
            "--toleration=testbed.k8s-gpu-acceptance.io/scenario=mig:NoSchedule)",
        )
    ]


def test_pinned_by_the_hostname_label_not_the_node_name():
    targets, _ = select([node("ip-10-0-1-7.ec2.internal", hostname="ip-10-0-1-7")])
    assert targets[0].node_selector({"pool": "gpu"}) == {
        "pool": "gpu",
        "kubernetes.io/hostname": "ip-10-0-1-7",
    }


def test_broken_nodes_are_no_result_and_excluded_ones_not_probed():
    nodes = [
        node("a-notready", ready=False),
        node("b-cordoned", cordoned=True),
        node("c-no-plugin", 8, allocatable=0),
        node("d-other-pool", labels={"pool": "other"}),
        node("e-ok", labels={"pool": "gpu"}),
        node("f-gfd-only", 0, labels={"nvidia.com/gpu.present": "true", "pool": "gpu"}),
    ]
    targets, skipped = select(nodes, node_selector={"pool": "gpu"})
    assert [t.node for t in targets] == ["e-ok"]
    by_node = {s.node: (s.status, s.reason) for s in skipped}
    assert by_node["a-notready"][0] == "not-probed"  # outside --node-selector comes first
    targets, skipped = select(nodes)
    by_node = {s.node: (s.status, s.reason) for s in skipped}
    assert by_node["a-notready"] == ("no-result", "node is NotReady: no pod can start there")
    assert by_node["b-cordoned"] == ("not-probed", "cordoned (spec.unschedulable)")
    assert (
        by_node["c-no-plugin"][0] == "no-result"
        and "allocatable nvidia.com/gpu is 0" in by_node["c-no-plugin"][1]
    )
    assert by_node["f-gfd-only"][0] == "no-result"
    assert {t.node for t in targets} == {"d-other-pool", "e-ok"}


def test_idle_only_skips_busy_nodes_and_says_how_busy():
    nodes = [node("busy", 8), node("half", 8), node("idle", 8)]
    used = {"busy": 8, "half": 4}
    targets, skipped = select(nodes, used_gpus=used, idle_only=True, gpus=4)
    assert [t.node for t in targets] == ["half", "idle"]
    assert skipped == [
        Skipped("busy", "not-probed", "busy: 0 of 8 nvidia.com/gpu free, --gpus=4 needed (--idle-only)")
    ]
    targets, skipped = select(nodes, used_gpus=used, gpus=4)
    assert len(targets) == 3 and not skipped  # without --idle-only a busy node is probed (and pends)


def test_natural_order():
    assert sorted(["gpu-node-10", "gpu-node-2", "gpu-node-1"], key=sweep.natural_key) == [
        "gpu-node-1",
        "gpu-node-2",
        "gpu-node-10",
    ]


def test_queue_never_exceeds_its_bound_and_finishes_everything():
    queue = Queue([f"n{i}" for i in range(10)], max_parallel=3)
    peak, started = 0, []

    def start(name):
        nonlocal peak
        started.append(name)
        peak = max(peak, len(queue.in_flight))

    def wait_some(in_flight):
        assert len(in_flight) <= 3
        return sorted(in_flight)[:2]  # two pods decided per wait

    finished = sweep.drive(queue, start, wait_some)
    assert peak == 3 and sorted(finished) == sorted(started) and len(set(finished)) == 10


def test_a_wait_that_decides_nothing_is_an_error_not_a_hang():
    with pytest.raises(RuntimeError, match="without deciding"):
        sweep.drive(Queue(["n1"], 1), lambda _n: None, lambda _s: [])
    with pytest.raises(ValueError):
        Queue(["n1"], 0)


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [
        ({"scheduling": "passed", "driver": "passed", "gpu_perf": "passed"}, "passed"),
        ({"scheduling": "passed", "driver": "failed", "gpu_perf": "blocked"}, "failed"),
        ({"scheduling": "failed", "driver": "blocked"}, "no-result"),
        ({"scheduling": "blocked", "driver": "blocked"}, "no-result"),
        ({"driver": "blocked", "gpt2": "blocked"}, "no-result"),
        ({"scheduling": "passed", "driver": "passed", "gpt2": "skipped"}, "passed"),
        ({}, "no-result"),
    ],
)
def test_node_status(outcomes, status):
    assert sweep.node_status(outcomes) == status


def test_rows_failures_first_never_dropping_a_node():
    h100 = parse_document((RECORDINGS / "h100.log").read_text())
    ok = {"scheduling": {"outcome": "passed"}, "driver": {"outcome": "passed"}}
    bad = {
        "scheduling": {"outcome": "passed"},
        "driver": {"outcome": "failed", "diagnosis": {"seen": "no /proc/driver/nvidia/version"}},
        "nvidia_smi": {"outcome": "blocked", "message": "BLOCKED by driver"},
    }
    unschedulable = {
        "scheduling": {"outcome": "failed", "message": "Unschedulable: Insufficient nvidia.com/gpu"}
    }
    rows = sweep.build_rows(
        {"gpu-node-10": ok, "gpu-node-2": ok, "gpu-node-3": bad, "gpu-node-4": unschedulable},
        [Skipped("gpu-node-mig", "not-probed", "untolerated taint")],
        {"gpu-node-2": h100},
        probed=["gpu-node-2", "gpu-node-3", "gpu-node-4", "gpu-node-10", "gpu-node-11"],
    )
    assert [(r.node, r.status) for r in rows] == [
        ("gpu-node-3", "failed"),
        ("gpu-node-4", "no-result"),
        ("gpu-node-11", "no-result"),
        ("gpu-node-mig", "not-probed"),
        ("gpu-node-2", "passed"),
        ("gpu-node-10", "passed"),
    ]
    assert rows[0].reason == "driver: no /proc/driver/nvidia/version"
    assert rows[1].reason.startswith("scheduling: Unschedulable")
    assert "no test reported" in rows[2].reason
    figures = rows[4].figures
    assert figures["gpu"] == "NVIDIA H100 80GB HBM3" and figures["bf16_tflops"] > 100
    assert sweep.summary(rows) == {"failed": 1, "no-result": 2, "not-probed": 1, "passed": 2}
    entry = rows[0].as_dict()
    assert entry["name"] == "gpu-node-3" and entry["layers"][1] == {"name": "driver", **bad["driver"]}
    json.dumps([r.as_dict() for r in rows])  # report.json-ready


def test_html_table_is_escaped_sortable_and_in_row_order():
    rows = [NodeRow("n<1>", "failed", "driver: <no driver>"), NodeRow("n2", "passed")]
    page = sweep.rows_html(rows)
    assert "n&lt;1&gt;" in page and "&lt;no driver&gt;" in page and "<no driver>" not in page
    assert page.index("n&lt;1&gt;") < page.index(">n2<") and "gaSort" in page
    assert "Nodes (2: 1 failed, 1 passed)" in page


def test_node_patch_writes_a_label_and_the_details():
    row = NodeRow("gpu-node-3", "failed", "driver: x", {"driver": {"outcome": "failed"}})
    patch = sweep.node_patch(row, "run-1", dt.datetime(2026, 11, 25, 12, tzinfo=dt.timezone.utc))
    assert patch["metadata"]["labels"] == {"k8s-gpu-acceptance/verdict": "failed"}
    detail = json.loads(patch["metadata"]["annotations"]["k8s-gpu-acceptance/last-run"])
    assert detail == {
        "at": "2026-11-25T12:00:00Z",
        "failed_layers": ["driver"],
        "reason": "driver: x",
        "run_id": "run-1",
        "status": "failed",
    }


def test_a_multi_gpu_pods_row_shows_each_gpu_and_its_slowest_figures():
    # Shaped like the probe's gpu_perf layer in a --gpus=2 pod (per_gpu: cuda:0 first, then each other GPU).
    per_gpu = [
        {"index": 0, "bf16_tflops": 792.2, "memory_bandwidth_gbps": 4230.2, "tflops_ratio": 0.801},
        {"index": 1, "bf16_tflops": 401.0, "memory_bandwidth_gbps": 4228.9, "tflops_ratio": 0.405},
    ]
    document = {
        "layers": {
            "driver": {"metrics": {"gpus": [{"name": "NVIDIA H200"}, {"name": "NVIDIA H200"}]}},
            "gpu_perf": {"metrics": {**per_gpu[0], "per_gpu": per_gpu}},
        }
    }
    figures = sweep.key_figures(document)
    assert figures["bf16_tflops"] == 401.0 and figures["tflops_ratio"] == 0.405
    assert figures["memory_bandwidth_gbps"] == 4228.9
    assert figures["per_gpu"] == ("cuda:0 792.2 TFLOP/s, 4230.2 GB/s; cuda:1 401.0 TFLOP/s, 4228.9 GB/s")
    one_gpu = sweep.key_figures({"layers": {"gpu_perf": {"metrics": per_gpu[0]}}})
    assert one_gpu["bf16_tflops"] == 792.2 and "per_gpu" not in one_gpu
