"""The nightly path without pytest or S3: record -> history -> verdicts -> append, on --history-dir."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from gpu_probe.document import parse_document

from k8s_gpu_acceptance.history import KEY_FIELDS
from k8s_gpu_acceptance.nightly import (
    DEFAULT_GATING,
    NightlyConfig,
    append,
    build_record,
    evaluate,
    nightly_config,
    parse_match,
    parse_names,
)
from k8s_gpu_acceptance.regression import Policy

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"
ENVIRONMENT = {
    "gpu_model": "NVIDIA H100 80GB HBM3",
    "model": "random-gpt2-small",
    "driver_version": "580.159.04",
    "node": "gpu-node-1",
}
START = dt.datetime(2026, 11, 20, 2, 0, tzinfo=dt.timezone.utc)


def night(n: int, recording: str = "h100") -> Any:
    document = parse_document((RECORDINGS / f"{recording}.log").read_text(encoding="utf-8"))
    return build_record(
        f"run-{n}", START + dt.timedelta(days=n), ENVIRONMENT, document, {"gpt2": "passed"}, "passed", 20.0
    )


def run(config: NightlyConfig, n: int, recording: str = "h100") -> Any:
    outcome = evaluate(config, night(n, recording), None)
    append(outcome, None, report_url=f"s3://b/p/run-{n}/report.html")
    return outcome


def test_three_runs_then_a_slow_one(tmp_path: Path) -> None:
    config = NightlyConfig(history_dir=tmp_path, gating=(*DEFAULT_GATING, "gpt2_p50_ms"))
    first = run(config, 0)
    assert first.assessment is not None and first.regressions == []
    assert {j.verdict for j in first.assessment.judgements.values()} == {"no baseline yet"}
    assert first.written_to and first.written_to[0].startswith(str(tmp_path))
    run(config, 1)
    third = run(config, 2)
    assert third.assessment is not None
    bf16 = third.assessment.judgements["bf16_tflops"]
    assert bf16.verdict == "same" and bf16.baseline is not None and bf16.baseline.runs == 2
    assert [r.run_id for r in third.history] == ["run-1", "run-0"]
    slow = run(config, 3, "h100-slow")
    assert slow.assessment is not None
    verdicts = {name: j.verdict for name, j in slow.assessment.judgements.items() if j.value is not None}
    assert verdicts["gpt2_p50_ms"] == "worse" and verdicts["gpt2_tokens_per_s"] == "worse"
    assert verdicts["gpt2_decode_step_graph_ms"] == "worse"  # the default gate: h100.log measures it
    assert verdicts["bf16_tflops"] == "same" and verdicts["memory_bandwidth_gbps"] == "same"
    assert slow.regressions == ["gpt2_decode_step_graph_ms", "gpt2_p50_ms"] and slow.fails_run
    document = slow.as_dict()
    assert document["regressions"]["regressions"] == ["gpt2_decode_step_graph_ms", "gpt2_p50_ms"]
    assert document["history"]["record_locations"] == slow.written_to


def test_warn_mode_does_not_fail_the_run(tmp_path: Path) -> None:
    config = NightlyConfig(history_dir=tmp_path, regressions="warn", gating=("gpt2_p50_ms",))
    for n in range(2):
        run(config, n)
    slow = run(config, 2, "h100-slow")
    assert slow.regressions == ["gpt2_p50_ms"] and not slow.fails_run


def test_consecutive_nights(tmp_path: Path) -> None:
    config = NightlyConfig(history_dir=tmp_path, policy=Policy(consecutive=2), gating=("gpt2_p50_ms",))
    for n in range(3):
        run(config, n)
    assert run(config, 3, "h100-slow").regressions == []
    assert run(config, 4, "h100-slow").regressions == ["gpt2_p50_ms"]


def test_no_history_configured_is_no_assessment() -> None:
    outcome = evaluate(NightlyConfig(), night(0), None)
    assert outcome.assessment is None and outcome.error is None and not outcome.config.enabled


def test_an_unreadable_history_is_an_error_not_a_crash(tmp_path: Path) -> None:
    def broken() -> Any:
        raise ConnectionError("cannot connect to S3 endpoint")

    config = NightlyConfig(history_bucket="b")
    outcome = evaluate(config, night(0), broken, describe=lambda exc: f"described: {exc}")
    assert outcome.assessment is None and outcome.error == "described: cannot connect to S3 endpoint"
    append(outcome, broken)
    assert outcome.write_errors == ["s3: ConnectionError: cannot connect to S3 endpoint"]


def test_parse_names_and_match() -> None:
    assert parse_names("bf16_tflops, gpt2_p50_ms,bf16_tflops", ["bf16_tflops", "gpt2_p50_ms"], "x") == (
        "bf16_tflops",
        "gpt2_p50_ms",
    )
    with pytest.raises(ValueError, match="unknown --baseline-match field nod: choose from"):
        parse_match("nod")
    assert parse_match("node") == ("gpu_model", "model", "node")
    assert parse_match("") == ("gpu_model", "model")
    assert parse_match("all") == KEY_FIELDS


def values(**overrides: Any) -> dict[str, Any]:
    """Option values as settings.load_settings hands them over (the defaults of the option table)."""
    from k8s_gpu_acceptance.settings import SPECS

    return {name: spec.default for name, spec in SPECS.items()} | overrides


def test_nightly_config_defaults_follow_the_report_upload() -> None:
    config = nightly_config(values(s3_bucket="reports", s3_prefix="nightly/"))
    assert config.history_bucket == "reports" and config.history_prefix == "nightly"
    assert config.policy == Policy() and config.regressions == "fail" and config.gating == DEFAULT_GATING
    assert config.enabled
    off = nightly_config(values(s3_bucket="reports", history_bucket="none"))
    assert off.history_bucket is None and not off.enabled
    own = nightly_config(values(history_dir="~/h", history_bucket="hist", history_prefix="p"))
    assert own.history_dir == Path("~/h").expanduser() and own.history_bucket == "hist"
    assert nightly_config(values(regression_metrics="gpt2_p50_ms")).gating == ("gpt2_p50_ms",)


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"baseline_window": 0}, "baseline_window"),
        ({"baseline_min_runs": 11}, "baseline_min_runs"),
        ({"regression_band": -1.0}, "regression_band"),
        ({"regression_min_change": 1.0}, "regression_min_change"),
        ({"regression_consecutive": 3}, "regression_consecutive"),
        ({"baseline_match": "drivr"}, "baseline_match"),
        ({"regression_metrics": "tflops"}, "regression_metrics"),
    ],
)
def test_nightly_config_names_the_bad_option(overrides: dict[str, Any], option: str) -> None:
    with pytest.raises(ValueError) as raised:
        nightly_config(values(**overrides))
    assert raised.value.args[1] == option
