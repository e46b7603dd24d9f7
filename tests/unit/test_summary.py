"""The CI job summary (Markdown) from report.json: verdict, failed layers, key figures with baseline."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from gpu_probe.document import parse_document

from k8s_gpu_acceptance.nightly import NightlyConfig, append, build_record, evaluate
from k8s_gpu_acceptance.review import key_figures_json
from k8s_gpu_acceptance.summary import main, markdown_summary

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"
THRESHOLDS = {"max_token_latency_ms": 50.0, "min_tokens_per_s": 20.0, "min_tflops_ratio": 0.4}
ENVIRONMENT = {"gpu_model": "NVIDIA H100 80GB HBM3", "model": "random-gpt2-small", "driver_version": "580.1"}


def report(tmp_path: Path, nights: int, last: str, warn: bool = False) -> dict[str, object]:
    """report.json (1.1 sections) of the last of `nights` runs on --history-dir, as the plugin builds it."""
    config = NightlyConfig(
        history_dir=tmp_path, gating=("gpt2_p50_ms",), regressions="warn" if warn else "fail"
    )
    for n in range(nights):
        recording = last if n == nights - 1 else "h100"
        document = parse_document((RECORDINGS / f"{recording}.log").read_text(encoding="utf-8"))
        when = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc) + dt.timedelta(days=n)
        record = build_record(f"run-{n}", when, ENVIRONMENT, document, {}, "passed", 20.0)
        outcome = evaluate(config, record, None)
        append(outcome, None)
    return {
        "schema_version": "1.2",
        "run_id": record.run_id,
        "title": "GPU acceptance: testbed · NVIDIA H100 80GB HBM3 · 2026-11-22",
        "outcome": "passed",
        "environment": {**ENVIRONMENT, "node": "gpu-node-1"},
        "layers": [{"name": "gpt2", "title": "GPT-2 generation", "outcome": "passed"}],
        "key_figures": key_figures_json(record.figures, THRESHOLDS),
        **outcome.as_dict(),
    }


def layer_metrics(recording: str, layer: str) -> dict[str, float]:
    """A layer's metrics in a recording: the expected figures are read from the recording, not copied."""
    document = parse_document((RECORDINGS / f"{recording}.log").read_text(encoding="utf-8"))
    metrics: dict[str, float] = document["layers"][layer]["metrics"]
    return metrics


def test_regressed_run(tmp_path: Path) -> None:
    text = markdown_summary(report(tmp_path, 3, "h100-slow"))
    assert text.startswith("## ⚠️ GPU acceptance: testbed · NVIDIA H100 80GB HBM3 · 2026-11-22: REGRESSED\n")
    row = next(line for line in text.splitlines() if line.startswith("| GPT-2 per-token latency p50 |"))
    fast, slow = (layer_metrics(name, "gpt2") for name in ("h100", "h100-slow"))
    p50, slow_p50 = fast["token_latency_ms_p50"], slow["token_latency_ms_p50"]
    assert row == (
        f"| GPT-2 per-token latency p50 | {slow_p50:.2f} ms |  | {p50:.2f} ms | +50.0 % "
        "| **worse (regression)** |"
    )
    bf16 = layer_metrics("h100", "gpu_perf")["bf16_tflops"]
    assert f"| bf16 matmul | {bf16:.1f} TFLOP/s |  | {bf16:.1f} TFLOP/s | +0.0 % | same |" in text
    assert "Run `run-2` (node gpu-node-1, driver_version 580.1)." in text


def test_warn_mode_and_first_run(tmp_path: Path) -> None:
    assert "PASSED" in markdown_summary(report(tmp_path / "a", 3, "h100-slow", warn=True)).splitlines()[0]
    first = markdown_summary(report(tmp_path / "b", 1, "h100"))
    assert "| no baseline yet |" in first and first.startswith("## ✅")


def test_failed_layer_with_its_diagnosis() -> None:
    text = markdown_summary(
        {
            "run_id": "r",
            "outcome": "failed",
            "environment": {"gpu_model": "NVIDIA H100 80GB HBM3"},
            "layers": [
                {
                    "name": "driver",
                    "title": "Driver",
                    "outcome": "failed",
                    "diagnosis": {
                        "cause": "no /dev/nvidia* in the pod",
                        "fix": "use runtimeClassName: nvidia",
                    },
                }
            ],
        }
    )
    assert text.startswith("## ❌ GPU acceptance: NVIDIA H100 80GB HBM3: FAILED")
    assert "- **Driver** failed: no /dev/nvidia* in the pod\n  - fix: use runtimeClassName: nvidia" in text


def test_main_reads_a_file_and_says_when_there_is_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"run_id": "r", "outcome": "passed"}), encoding="utf-8")
    assert main([str(path)]) == 0 and "PASSED" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.json")]) == 2
    assert "no report" in capsys.readouterr().out
