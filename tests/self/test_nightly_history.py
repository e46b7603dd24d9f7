"""Nightly runs against the live testbed with one bucket: the history in MinIO, the baseline, a regression.

Five runs of the suite as a user runs it (pytest subprocess, -m gpu), all uploading to one fresh bucket of
the testbed's real MinIO, the history defaulting to that bucket:
1-2. the real H100 recording: no baseline yet (fewer than 2 comparable runs);
3.   the same recording: judged against a baseline made of runs 1 and 2, every figure `same`;
4.   h100-slow (DERIVED from h100.log: GPT-2 1.5x slower, nothing else changed, see h100-slow.md): the GPT-2
     figures are `worse`, bf16 TFLOP/s and GB/s `same`, and the run exits with the regression status 7;
5.   h100-slow again with --regressions=warn: flagged, exit 0.
Then the bucket holds one history object per run and an index naming all of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from gpu_probe.document import parse_document
from suiterun import SuiteRun

from k8s_gpu_acceptance.history import key_figures
from k8s_gpu_acceptance.nightly import REGRESSION_EXIT
from k8s_gpu_acceptance.regression import Policy

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"
PREFIX = "nightly"
RECORDING = "testbed.k8s-gpu-acceptance.io/recording"


def gpt2_gate() -> str:
    """The GPT-2 figure that gates: the probe's regression statistic when the recording carries it, else
    p50 (the recordings made before the statistic existed)."""
    document = parse_document((RECORDINGS / "h100.log").read_text(encoding="utf-8"))
    return (
        "gpt2_decode_step_graph_ms"
        if "gpt2_decode_step_graph_ms" in key_figures(document, None)
        else "gpt2_p50_ms"
    )


def verdicts(run: SuiteRun) -> dict[str, str]:
    metrics = run.report["regressions"]["metrics"]
    return {m["metric"]: m["verdict"] for m in metrics if m["value"] is not None}


def test_three_runs_make_a_baseline_and_a_slower_run_is_a_regression(
    run_suite: Any, testbed: Any, testbed_s3: Any, fresh_bucket: str
) -> None:
    recordings_dir = Path(testbed.recordings_dir)
    assert (recordings_dir / "h100-slow.log").is_file(), (
        f"the testbed serves recordings from {recordings_dir}, which has no h100-slow.log"
    )
    gate = gpt2_gate()
    common = (
        f"--s3-bucket={fresh_bucket}",
        f"--s3-prefix={PREFIX}",
        f"--regression-metrics={gate},bf16_tflops,memory_bandwidth_gbps",
    )
    runs = []
    for _ in range(3):
        run = run_suite(*common, f"--pod-annotation={RECORDING}=h100")
        assert run.ret == 0, run.output
        runs.append(run)
    first, second, third = runs
    assert first.report["schema_version"] == "1.5"
    for early in (first, second):
        assert set(verdicts(early).values()) == {"no baseline yet"}, verdicts(early)
        assert early.report["history"]["record_locations"][0].startswith(
            f"s3://{fresh_bucket}/{PREFIX}/history/v1/"
        )

    # Run 3: the baseline is runs 1 and 2.
    regressions = third.report["regressions"]
    assert [r["run_id"] for r in regressions["baseline_runs"]] == [second.run_id, first.run_id]
    # Every figure of the recording is the same; time to verdict is this machine's real wall time (it varied
    # 20 % between runs on the shared 2-core host): informational, it never fails the run (exit 0 above).
    recorded = {name: v for name, v in verdicts(third).items() if name != "time_to_verdict_s"}
    assert set(recorded.values()) == {"same"}, verdicts(third)
    bf16 = next(m for m in regressions["metrics"] if m["metric"] == "bf16_tflops")
    recorded_bf16 = key_figures(parse_document((RECORDINGS / "h100.log").read_text(encoding="utf-8")), None)[
        "bf16_tflops"
    ]
    assert bf16["baseline"]["runs"] == 2 and bf16["baseline"]["median"] == bf16["value"] == recorded_bf16
    html = (third.report_dir / "report.html").read_text(encoding="utf-8")
    assert "Baseline: the last 2 comparable runs" in html
    # the spread shown is the relative floor of the median (two equal runs have no spread of their own)
    floor = recorded_bf16 * Policy().min_change
    spread = re.escape(f"{recorded_bf16:.1f} TFLOP/s ± {floor:.2f} TFLOP/s (2 runs)")
    assert re.search(rf'data-figure="bf16_tflops">.*?{spread}', html)
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg" class="trend"') >= 8
    assert third.report["title"].startswith("GPU acceptance: ") and "NVIDIA H100 80GB HBM3" in html

    # Run 4: GPT-2 1.5x slower (derived recording): worse on the GPT-2 figures only, exit 7.
    slow = run_suite(*common, f"--pod-annotation={RECORDING}=h100-slow")
    assert slow.ret == REGRESSION_EXIT, slow.output
    assert slow.report["outcome"] == "passed"  # every layer is within its budget: only the trend is worse
    found = verdicts(slow)
    gpt2 = {name for name in found if name.startswith("gpt2_")}
    assert {name: found[name] for name in gpt2} == dict.fromkeys(gpt2, "worse"), found
    assert {found["bf16_tflops"], found["memory_bandwidth_gbps"], found["tflops_ratio"]} == {"same"}
    assert found["probe_duration_s"] == "same"
    assert slow.report["regressions"]["regressions"] == [gate]
    assert slow.report["regressions"]["fails_run"] is True
    gate_entry = next(m for m in slow.report["regressions"]["metrics"] if m["metric"] == gate)
    assert gate_entry["change_pct"] == pytest.approx(50.0, abs=0.5)
    assert f"REGRESSION against the baseline: {gate} +" in slow.output
    assert "REGRESSED" in (slow.report_dir / "report.html").read_text(encoding="utf-8")

    # Run 5: the same with --regressions=warn: flagged, not failing.
    warned = run_suite(*common, f"--pod-annotation={RECORDING}=h100-slow", "--regressions=warn")
    assert warned.ret == 0, warned.output
    assert warned.report["regressions"]["regressions"] == [gate]
    assert warned.report["regressions"]["fails_run"] is False

    # The history in MinIO: one object per run under the series, and an index naming every run.
    keys = [
        o["Key"]
        for o in testbed_s3.list_objects_v2(Bucket=fresh_bucket, Prefix=f"{PREFIX}/history/v1/")["Contents"]
    ]
    series = first.report["history"]["series"]
    run_objects = [k for k in keys if k.startswith(f"{PREFIX}/history/v1/{series}/runs/")]
    all_runs = [*runs, slow, warned]
    assert len(run_objects) == len(all_runs), keys
    index = json.loads(
        testbed_s3.get_object(Bucket=fresh_bucket, Key=f"{PREFIX}/history/v1/{series}/index.json")[
            "Body"
        ].read()
    )
    assert [entry["run_id"] for entry in index["runs"]] == [r.run_id for r in reversed(all_runs)]
    stored = next(entry for entry in index["runs"] if entry["run_id"] == slow.run_id)
    assert stored["regressions"] == [gate] and stored["verdicts"][gate] == "worse"
    assert stored["report_url"].startswith(f"s3://{fresh_bucket}/{PREFIX}/") and stored[
        "report_url"
    ].endswith(f"/{slow.run_id}/report.html")
    assert stored["figures"] == slow.report["history"]["figures"]


def test_concurrent_writers_on_minio_lose_no_run(testbed_s3: Any, fresh_bucket: str) -> None:
    """Eight runs of one series appending at once to the real MinIO: the conditional PUTs (If-None-Match,
    If-Match) make every run land in the index, and a reader sees all of them."""
    import datetime as dt
    import threading

    from k8s_gpu_acceptance.history import History, RunRecord, S3Store

    testbed_s3.create_bucket(Bucket=fresh_bucket)
    store = S3Store(testbed_s3, fresh_bucket, PREFIX)
    assert store.put("probe.json", b"1", if_absent=True)
    assert not store.put("probe.json", b"2", if_absent=True)  # MinIO honours If-None-Match
    start = dt.datetime(2026, 11, 1, 2, tzinfo=dt.timezone.utc)
    records = [
        RunRecord(
            f"w{n}", (start + dt.timedelta(minutes=n)).isoformat(), {"gpu_model": "g", "model": "m"}, "passed"
        )
        for n in range(8)
    ]
    threads = [
        threading.Thread(target=History(S3Store(testbed_s3, fresh_bucket, PREFIX)).append, args=(r,))
        for r in records
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    series = records[0].series
    index = json.loads(
        testbed_s3.get_object(Bucket=fresh_bucket, Key=f"{PREFIX}/history/v1/{series}/index.json")[
            "Body"
        ].read()
    )
    assert sorted(entry["run_id"] for entry in index["runs"]) == [f"w{n}" for n in range(8)]
    assert [r.run_id for r in History(store).recent(series, 10)] == [f"w{n}" for n in range(7, -1, -1)]
