"""The history and the review hooks in-process (pytester, no cluster): three runs of the real H100
recording on one --history-dir make a baseline, the DERIVED slow recording is a regression (exit 7), and the
page carries its title, the probe's own per-layer times and skip reasons without paths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import test_plugin
from test_plugin import report_json, with_recording

from k8s_gpu_acceptance.nightly import REGRESSION_EXIT

pytest_plugins = ["pytester"]
suite = test_plugin.suite  # a throwaway project with the plugin active and no GPU_ACCEPTANCE_* variable

GATES = "--regression-metrics=gpt2_p50_ms,bf16_tflops,memory_bandwidth_gbps"  # the recordings predate
# decode_step_graph_ms, the default GPT-2 gate


def run(suite: pytest.Pytester, recording: str, history: Path, *args: str) -> pytest.RunResult:
    with_recording(suite, recording)
    return suite.runpytest(
        "--target=local", "-m", "gpu", "--report-dir=out", f"--history-dir={history}", *args
    )


def test_baseline_then_regression_exit_7_then_warn(suite: pytest.Pytester, tmp_path: Path) -> None:
    history = tmp_path / "history"
    for _ in range(3):
        assert run(suite, "h100", history, GATES).ret == 0
    third = report_json(suite)
    assert third["schema_version"] == "1.1"
    bf16 = next(m for m in third["regressions"]["metrics"] if m["metric"] == "bf16_tflops")
    assert bf16["verdict"] == "same" and bf16["baseline"]["runs"] == 2

    slow = run(suite, "h100-slow", history, GATES)
    assert slow.ret == REGRESSION_EXIT
    slow.stdout.fnmatch_lines(["*REGRESSION against the baseline: gpt2_p50_ms +50.0 %*"])
    report = report_json(suite)
    assert report["outcome"] == "passed" and report["regressions"]["regressions"] == ["gpt2_p50_ms"]
    html = (suite.path / "out" / "report.html").read_text(encoding="utf-8")
    assert "REGRESSED" in html and "(exit status 7)" in html
    assert len(list((history / "history" / "v1").glob("*/runs/*.json"))) == 4

    warned = run(suite, "h100-slow", history, GATES, "--regressions=warn")
    assert warned.ret == 0 and "PASSED, with regressions (--regressions=warn)" in (
        suite.path / "out" / "report.html"
    ).read_text(encoding="utf-8")


def test_default_gates_without_the_regression_statistic_do_not_fail(
    suite: pytest.Pytester, tmp_path: Path
) -> None:
    """The recordings lack decode_step_graph_ms: GPT-2 is worse but gates nothing, and the page says so."""
    history = tmp_path / "history"
    for _ in range(2):
        assert run(suite, "h100", history).ret == 0
    slow = run(suite, "h100-slow", history)
    assert slow.ret == 0
    html = (suite.path / "out" / "report.html").read_text(encoding="utf-8")
    assert "Gating figures not measured in this run (they cannot fail it): GPT-2 decode step" in html


def test_page_title_durations_and_skip_reasons(suite: pytest.Pytester, tmp_path: Path) -> None:
    cluster_test = "import pytest\n\n@pytest.mark.gpu\n@pytest.mark.cluster\ndef test_cluster():\n    pass\n"
    suite.makepyfile(test_1_cluster=cluster_test)
    assert run(suite, "h100", tmp_path / "history").ret == 0
    html = (suite.path / "out" / "report.html").read_text(encoding="utf-8")
    title = re.search(r'<title id="head-title">(.*?)</title>', html)
    assert title is not None and title.group(1) == (
        f"GPU acceptance: this host · NVIDIA H100 80GB HBM3 · {report_json(suite)['started_at'][:10]}"
    )
    # pytest-html keeps the rows in a JSON blob: the probe's own times, the reasons without paths
    assert "4.10 s (probe)" in html and "1.34 s (probe)" in html
    assert "cluster layer, not applicable on --target local" in html
    assert "fixtures/plugin.py" not in html and ".py&#x27;, " not in html
    report = report_json(suite)
    assert {e["name"]: e["probe_duration_s"] for e in report["layers"]}["torch_cuda"] == 4.102
