"""The history and the review hooks in-process (pytester, no cluster): three runs of the real H100
recording on one --history-dir make a baseline, the DERIVED slow recording is a regression (exit 7), and the
page carries its title, the probe's own per-layer times and skip reasons without paths."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import test_plugin
from gpu_probe.document import parse_document
from test_plugin import RECORDINGS, report_json, with_recording

from k8s_gpu_acceptance.nightly import REGRESSION_EXIT

pytest_plugins = ["pytester"]
suite = test_plugin.suite  # a throwaway project with the plugin active and no GPU_ACCEPTANCE_* variable

GATES = "--regression-metrics=gpt2_p50_ms,bf16_tflops,memory_bandwidth_gbps"  # not the default gates:
# this test is about the user-facing p50


def run(
    suite: pytest.Pytester, recording: str, history: Path, *args: str, path: Path | None = None
) -> pytest.RunResult:
    with_recording(suite, recording, path=path)
    return suite.runpytest(
        "--target=local", "-m", "gpu", "--report-dir=out", f"--history-dir={history}", *args
    )


def test_baseline_then_regression_exit_7_then_warn(suite: pytest.Pytester, tmp_path: Path) -> None:
    history = tmp_path / "history"
    for _ in range(3):
        assert run(suite, "h100", history, GATES).ret == 0
    third = report_json(suite)
    assert third["schema_version"] == "1.5"
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


REGRESSION_STATISTIC = (
    "regression_metric",
    "decode_step_graph_ms",
    "decode_step_graph_ms_p10_p90",
    "decode_step_graph_replays",
)


def without_regression_statistic(text: str) -> str:
    """A probe log as an older probe wrote it: the gpt2 layer without decode_step_graph_ms and its kin."""
    start = text.index('{\n  "schema_version"')
    document, length = json.JSONDecoder().raw_decode(text[start:])
    for key in REGRESSION_STATISTIC:
        del document["layers"]["gpt2"]["metrics"][key]
    body = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)
    return text[:start] + body + text[start + length :]


def make_slow() -> Any:
    """tests/data/recordings/make_slow.py, the script that derives h100-slow.log."""
    spec = importlib.util.spec_from_file_location("make_slow", RECORDINGS / "make_slow.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_gates_without_the_regression_statistic_do_not_fail(
    suite: pytest.Pytester, tmp_path: Path
) -> None:
    """A log without decode_step_graph_ms (an older probe): GPT-2 is worse but gates nothing, and the page
    says so. The logs are h100.log and its slow derivation with the statistic taken out."""
    fast = without_regression_statistic((RECORDINGS / "h100.log").read_text(encoding="utf-8"))
    (tmp_path / "old.log").write_text(fast, encoding="utf-8")
    (tmp_path / "old-slow.log").write_text(make_slow().derive(fast), encoding="utf-8")
    history = tmp_path / "history"
    for _ in range(2):
        assert run(suite, "h100", history, path=tmp_path / "old.log").ret == 0
    slow = run(suite, "h100-slow", history, path=tmp_path / "old-slow.log")
    assert slow.ret == 0
    html = (suite.path / "out" / "report.html").read_text(encoding="utf-8")
    assert "Gating figures not measured in this run (they cannot fail it): GPT-2 decode step" in html


def test_default_gates_catch_the_slow_recording(suite: pytest.Pytester, tmp_path: Path) -> None:
    """h100.log measures decode_step_graph_ms: with the default gates the slow recording fails (exit 7)."""
    history = tmp_path / "history"
    for _ in range(2):
        assert run(suite, "h100", history).ret == 0
    slow = run(suite, "h100-slow", history)
    assert slow.ret == REGRESSION_EXIT
    slow.stdout.fnmatch_lines(["*REGRESSION against the baseline: gpt2_decode_step_graph_ms +50.0 %*"])
    assert "gpt2_decode_step_graph_ms" in report_json(suite)["regressions"]["regressions"]


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
    layers = parse_document((RECORDINGS / "h100.log").read_text(encoding="utf-8"))["layers"]
    for layer in ("torch_cuda", "gpt2"):
        assert f"{layers[layer]['duration_s']:.2f} s (probe)" in html
    assert "cluster layer, not applicable on --target local" in html
    assert "fixtures/plugin.py" not in html and ".py&#x27;, " not in html
    report = report_json(suite)
    probe_durations = {e["name"]: e["probe_duration_s"] for e in report["layers"]}
    assert probe_durations["torch_cuda"] == layers["torch_cuda"]["duration_s"]
