"""A fleet sweep's report: key figures across the nodes, a merged environment, the probe's per-layer times.

Three nodes serve recordings: two the real H100 recording, one its DERIVED GPT-2-1.5x-slower copy
(tests/data/recordings/h100-slow.md). Before this, the sweep's report showed only "time to verdict", 0.00 s
probe layer times and "unknown" driver/CUDA/torch.
"""

from __future__ import annotations

import copy
import datetime as dt
import statistics
from pathlib import Path

from gpu_probe.document import parse_document

from k8s_gpu_acceptance.cluster import ClusterFacts
from k8s_gpu_acceptance.document import ProbeDocument
from k8s_gpu_acceptance.fleet import SweepPlan, SweepRun
from k8s_gpu_acceptance.layers import LAYER_NAMES
from k8s_gpu_acceptance.pods import PodRun
from k8s_gpu_acceptance.probe import ProbeRun
from k8s_gpu_acceptance.report import build_json_report, html_summary, probe_duration
from k8s_gpu_acceptance.report_hooks import sweep_node_of
from k8s_gpu_acceptance.settings import Settings
from k8s_gpu_acceptance.state import LayerOutcome, RunState
from k8s_gpu_acceptance.summary import markdown_summary
from k8s_gpu_acceptance.sweep import Target

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"
H100 = parse_document((RECORDINGS / "h100.log").read_text(encoding="utf-8"))
SLOW = parse_document((RECORDINGS / "h100-slow.log").read_text(encoding="utf-8"))
NODES = {"gpu-node-1": H100, "gpu-node-2": H100, "gpu-node-3": SLOW}


def sweep_state(documents: dict[str, dict] = NODES) -> RunState:
    started = dt.datetime(2026, 11, 25, 21, 0, tzinfo=dt.timezone.utc)
    targets = [Target(node, node, 1, 1) for node in documents]
    state = RunState(
        run_id="20261125-210000-abcdef",
        target="k8s",
        started_at=started,
        finished_at=started + dt.timedelta(seconds=60),
        cluster=ClusterFacts("https://10.0.0.1:6443", "context c", True, None, "v1.31.2"),
        sweep=SweepRun(SweepPlan(targets=targets)),
    )
    for node, document in documents.items():
        pod = PodRun("ns", f"gpu-probe-{node}", node_name=node, image="registry/probe:1")
        state.node_probes[node] = ProbeRun("k8s", ProbeDocument(document), "", None, node, 9.0, pod)
        state.node_layers[node] = {name: LayerOutcome(name, "passed", 0.01) for name in LAYER_NAMES[2:]}
    state.layers.update({name: LayerOutcome(name, "passed", 0.01) for name in LAYER_NAMES})
    return state


def _p50(document: dict) -> float:
    return float(document["layers"]["gpt2"]["metrics"]["token_latency_ms_p50"])


def test_key_figures_are_the_median_across_nodes_with_the_spread_and_the_worst_node():
    report = build_json_report(sweep_state(), Settings())
    figures = {entry["name"]: entry for entry in report["key_figures"]}
    assert {"gpt2_p50_ms", "bf16_tflops", "memory_bandwidth_gbps", "probe_duration_s"} <= set(figures)
    p50 = figures["gpt2_p50_ms"]
    assert p50["value"] == statistics.median([_p50(H100), _p50(H100), _p50(SLOW)]) == _p50(H100)
    spread = p50["across_nodes"]
    assert spread["nodes"] == 3 and spread["worst_node"] == "gpu-node-3"
    assert spread["worst_value"] == spread["max"] == _p50(SLOW) and spread["min"] == _p50(H100)
    tflops = figures["bf16_tflops"]["across_nodes"]
    assert tflops["min"] == tflops["max"] == tflops["worst_value"]  # the derived copy keeps bf16


def test_over_budget_is_judged_on_the_worst_node():
    slow_p95 = float(SLOW["layers"]["gpt2"]["metrics"]["token_latency_ms_p95"])
    fast_p95 = float(H100["layers"]["gpt2"]["metrics"]["token_latency_ms_p95"])
    budget = (slow_p95 + fast_p95) / 2  # the median node is within it, the slow one over it
    report = build_json_report(sweep_state(), Settings(max_token_latency_ms=budget))
    p95 = next(entry for entry in report["key_figures"] if entry["name"] == "gpt2_p95_ms")
    assert p95["value"] < budget and p95["over_budget"] is True


def test_environment_says_what_the_nodes_agree_on_and_mixed_where_they_differ():
    environment = build_json_report(sweep_state(), Settings())["environment"]
    assert environment["node"] == "3 nodes"
    assert environment["gpu_model"] == "NVIDIA H100 80GB HBM3"
    assert environment["driver_version"].startswith("580.")
    assert "unknown" not in (environment["torch_version"], environment["cuda_driver_version"])
    assert environment["probe_image"] == "registry/probe:1"
    other = copy.deepcopy(H100)
    other["layers"]["driver"]["metrics"]["driver_version"] = "570.86.15"
    mixed = build_json_report(sweep_state({**NODES, "gpu-node-4": other}), Settings())["environment"]
    assert mixed["driver_version"] == "mixed (2 values)" and mixed["node"] == "4 nodes"


def test_layer_times_are_the_probes_own_median_across_nodes():
    state = sweep_state()
    report = build_json_report(state, Settings())
    driver = next(entry for entry in report["layers"] if entry["name"] == "driver")
    expected = H100["layers"]["driver"]["duration_s"]
    assert expected > 0 and driver["probe_duration_s"] == round(expected, 3)
    gpt2 = next(entry for entry in report["layers"] if entry["name"] == "gpt2")
    assert gpt2["probe_duration_s"] == round(H100["layers"]["gpt2"]["duration_s"], 3)
    assert probe_duration(state, "gpt2", "gpu-node-3") == round(SLOW["layers"]["gpt2"]["duration_s"], 3)
    assert probe_duration(state, "gpt2", "gpu-node-9") is None
    assert sweep_node_of("tests/gpu/test_4_driver.py::test_driver[gpu-node-8]") == "gpu-node-8"
    assert sweep_node_of("tests/gpu/test_4_driver.py::test_driver") is None


def test_the_html_shows_the_spread_and_the_worst_node():
    page = "".join(html_summary(sweep_state(), Settings()))
    assert "Key figures across the nodes" in page
    across = page[page.index("gpu-acc-across-nodes") :]
    row = across[across.index('<tr data-figure="gpt2_p50_ms">') :].split("</tr>")[0]
    assert f"gpu-node-3: {_p50(SLOW):.2f} ms" in row
    assert 'data-figure="bf16_tflops"' in page and "all equal" in page  # no node is worse than another
    assert page.index("<h3>Key figures</h3>") < page.index("Key figures across the nodes")
    assert page.index("Key figures across the nodes") < page.index("<h2>Environment</h2>")
    assert "bf16 matmul" in page and "(the median across the nodes)" in page


def test_the_ci_summary_gives_the_spread_and_the_worst_node():
    text = markdown_summary(build_json_report(sweep_state(), Settings()))
    assert "nodes: min / max, worst |" in text
    p50 = next(line for line in text.splitlines() if line.startswith("| GPT-2 per-token latency p50 "))
    assert f"| 3: {_p50(H100):.2f} ms / {_p50(SLOW):.2f} ms, worst gpu-node-3 |" in p50
    bf16 = next(line for line in text.splitlines() if line.startswith("| bf16 matmul |"))
    assert bf16.endswith(", all equal |")
