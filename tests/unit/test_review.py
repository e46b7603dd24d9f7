"""The review section of report.html: title, verdict banner, key-figures table, trend plots (pure HTML)."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

from k8s_gpu_acceptance.history import FIGURES_BY_NAME, RunRecord, assess
from k8s_gpu_acceptance.regression import Policy
from k8s_gpu_acceptance.review import (
    history_note,
    key_figures_table,
    metadata_html,
    report_title,
    trend_svg,
    trends_html,
    verdict_banner,
)

KEY = {"gpu_model": "NVIDIA H100 80GB HBM3", "model": "random-gpt2-small", "driver_version": "580.159.04"}
THRESHOLDS = {"max_token_latency_ms": 50.0, "min_tflops_ratio": 0.4, "min_tokens_per_s": 20.0}
SVG = "{http://www.w3.org/2000/svg}"


def record(night: int, **figures: float) -> RunRecord:
    when = dt.datetime(2026, 11, 1, 2, tzinfo=dt.timezone.utc) + dt.timedelta(days=night)
    return RunRecord(f"night-{night}", when.isoformat(), dict(KEY), "passed", figures=figures)


HISTORY = [record(2, bf16_tflops=790.0), record(1, bf16_tflops=780.0), record(0, bf16_tflops=785.0)]


def test_title_names_cluster_gpu_and_date() -> None:
    assert (
        report_title("testbed (https://127.0.0.1:6443)", "NVIDIA H100 80GB HBM3", "2026-11-25")
        == "GPU acceptance: testbed (https://127.0.0.1:6443) · NVIDIA H100 80GB HBM3 · 2026-11-25"
    )
    assert report_title(None, "unknown", "2026-11-25") == "GPU acceptance: 2026-11-25"


def test_banner_passed_failed_regressed_and_warn() -> None:
    assert 'b-passed">PASSED<' in verdict_banner("passed", [], None, warn_only=False)
    failed = verdict_banner("failed", [("gpt2", "p95 61 ms over the 50 ms budget")], None, warn_only=False)
    assert "FAILED" in failed and "gpt2 failed: p95 61 ms over the 50 ms budget" in failed
    tonight = record(3, bf16_tflops=600.0)
    assessment = assess(tonight, HISTORY, Policy())
    regressed = verdict_banner("passed", [], assessment, warn_only=False)
    assert "REGRESSED" in regressed
    assert "bf16 matmul: 600.0 TFLOP/s, baseline 785.0 TFLOP/s (-23.6 %): worse" in regressed
    warned = verdict_banner("passed", [], assessment, warn_only=True)
    assert "PASSED, with regressions (--regressions=warn)" in warned
    assert "<script" not in verdict_banner("failed", [("x", "<script>")], None, warn_only=False)


def test_key_figures_table_rows_budget_baseline_change_verdict() -> None:
    tonight = record(3, bf16_tflops=600.0, gpt2_p95_ms=61.0, tflops_ratio=0.3)
    assessment = assess(tonight, HISTORY, Policy())
    table = key_figures_table(tonight.figures, THRESHOLDS, assessment)
    table, notes = table.split("</table>")
    root = ET.fromstring(table.replace("<br>", "<br/>") + "</table>")
    rows = {
        tr.get("data-figure"): ["".join(td.itertext()) for td in tr] for tr in root if tr.get("data-figure")
    }
    assert rows["bf16_tflops"] == [
        "bf16 matmul gating",
        "600.0 TFLOP/s",
        "",
        "785.0 TFLOP/s ± 78.50 TFLOP/s (3 runs)",
        "-23.6 %",
        "worse",
    ]
    assert rows["gpt2_p95_ms"][2] == "≤ 50.00 ms exceeded" and rows["gpt2_p95_ms"][5].startswith(
        "no baseline"
    )
    assert rows["tflops_ratio"][1:3] == ["0.300", "≥ 0.400 exceeded"]
    assert set(rows) == {"bf16_tflops", "gpt2_p95_ms", "tflops_ratio"}  # only what was measured
    assert rows["gpt2_p95_ms"][0] == "GPT-2 per-token latency p95"  # informational: no tag
    assert "Gating figures not measured in this run (they cannot fail it): GPT-2 decode step" in notes
    assert "memory bandwidth" in notes


def test_key_figures_without_history_say_so() -> None:
    table = key_figures_table({"bf16_tflops": 785.1}, THRESHOLDS, None)
    assert "history off" in table
    assert "No key figure" in key_figures_table({}, THRESHOLDS, None)


def test_trend_svg_is_valid_svg_with_band_median_budget_and_tonight() -> None:
    tonight = record(3, gpt2_p95_ms=9.0)
    history = [record(n, gpt2_p95_ms=7.0 + n * 0.1) for n in range(2, -1, -1)]
    assessment = assess(tonight, history, Policy())
    figure = FIGURES_BY_NAME["gpt2_p95_ms"]
    svg = trend_svg(figure, history, 9.0, assessment.judgements["gpt2_p95_ms"], 10.0)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and root.get("data-figure") == "gpt2_p95_ms"
    assert root.find(f"{SVG}rect[@class='band']") is not None
    assert root.find(f"{SVG}line[@class='median']") is not None
    assert root.find(f"{SVG}line[@class='budget']") is not None
    circles = root.findall(f"{SVG}circle")
    assert len(circles) == 4 and circles[-1].get("fill") == "#c62828"  # tonight, worse: red
    assert circles[0].findtext(f"{SVG}title") == "2026-11-01: 7.00 ms"  # oldest left
    assert trend_svg(figure, [], None, None, None) == ""


def test_trend_budget_far_off_scale_is_not_drawn() -> None:
    figure = FIGURES_BY_NAME["gpt2_p95_ms"]
    svg = trend_svg(figure, [], 7.0, None, 50.0)
    assert "budget" not in svg and ET.fromstring(svg) is not None


def test_trend_ticks_of_a_small_figure_stay_distinct() -> None:
    # The H100 cluster run's small-image report: probe duration 0.011 s, its axis read 0.01, 0.01, 0.01, 0.
    svg = trend_svg(FIGURES_BY_NAME["probe_duration_s"], [], 0.011, None, None)
    ends = [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG}text") if t.get("text-anchor") == "end"]
    labels = [text for text in ends if " " not in text]  # the axis, not the "0.011 s · no baseline" note
    assert labels == ["0", "0.005", "0.01", "0.015"]


def test_trends_html_only_figures_with_data() -> None:
    html = trends_html({"bf16_tflops": 785.0}, HISTORY, None, THRESHOLDS)
    assert html.count("<svg") == 1 and 'data-figure="bf16_tflops"' in html
    assert trends_html({}, [], None, THRESHOLDS) == ""


def test_history_note_explains_the_baseline_and_what_changed() -> None:
    tonight = record(3, bf16_tflops=780.0)
    tonight.key["driver_version"] = "590.1"
    note = history_note(assess(tonight, HISTORY, Policy()), "s3://b/p", None)
    assert "last 3 comparable runs (2026-11-01 .. 2026-11-03; same gpu_model, model)" in note
    assert "driver_version was 580.159.04" in note
    assert "History unavailable: boom" in history_note(None, None, "boom")
    assert "--history-dir" in history_note(None, None, None)


def test_metadata_folded_away() -> None:
    html = metadata_html({"Python": "3.12", "Plugins": {"html": "4.2.0"}})
    assert html.startswith("<details><summary>") and "html 4.2.0" in html
    assert metadata_html({}) == ""
