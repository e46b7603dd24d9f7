"""The history store (local directory backend: same code path as S3 above the ObjectStore) and assess()."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest
from gpu_probe.document import parse_document

from k8s_gpu_acceptance.history import (
    DirStore,
    History,
    RunRecord,
    assess,
    key_figures,
    run_key,
    series_id,
)
from k8s_gpu_acceptance.regression import Policy

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"
KEY = {
    "gpu_model": "NVIDIA H100 80GB HBM3",
    "model": "random-gpt2-small",
    "driver_version": "580.159.04",
    "cuda_driver_version": "13.0",
    "cuda_runtime_version": "13.0",
    "torch_version": "2.11.0+cu130",
    "cluster_version": "v1.36.1",
    "node": "gpu-node-1",
}
START = dt.datetime(2026, 11, 1, 2, 0, tzinfo=dt.timezone.utc)


def record(night: int, figures: dict[str, float], **key: str) -> RunRecord:
    return RunRecord(
        run_id=f"night-{night}",
        started_at=(START + dt.timedelta(days=night)).isoformat(),
        key={**KEY, **key},
        outcome="passed",
        layers={"gpt2": "passed"},
        figures=figures,
    )


def test_key_figures_of_the_real_h100_recording() -> None:
    document = parse_document((RECORDINGS / "h100.log").read_text())
    figures = key_figures(document, time_to_verdict_s=21.5)
    assert figures["gpt2_p50_ms"] == 11.024 and figures["gpt2_p95_ms"] == 11.788
    assert figures["gpt2_ttft_ms"] == 15.855 and figures["gpt2_tokens_per_s"] == 93.38
    assert figures["gpt2_decode_step_graph_ms"] == 0.8631
    assert figures["bf16_tflops"] == 777.3 and figures["memory_bandwidth_gbps"] == 2998.2
    assert figures["tflops_ratio"] == 0.786 and figures["bandwidth_ratio"] == 0.895
    assert figures["probe_duration_s"] == 8.606 and figures["time_to_verdict_s"] == 21.5


def test_cpu_fallback_and_failed_layers_give_no_figures() -> None:
    document = parse_document((RECORDINGS / "cpu.log").read_text())
    figures = key_figures(document, None)
    assert not any(name.startswith(("gpt2", "bf16", "memory", "tflops", "bandwidth")) for name in figures)
    assert "probe_duration_s" in figures and "time_to_verdict_s" not in figures
    assert key_figures(None, None) == {}


def test_run_key_and_series_id() -> None:
    key = run_key({"gpu_model": "NVIDIA H100 80GB HBM3", "model": "gpt2", "node": None})
    assert key["node"] == "unknown" and key["driver_version"] == "unknown"
    sid = series_id(key)
    assert sid.startswith("nvidia-h100-80gb-hbm3--gpt2-") and len(sid.rsplit("-", 1)[1]) == 8
    assert series_id({**key, "node": "other", "driver_version": "1"}) == sid  # series = GPU + model only
    assert series_id({**key, "gpu_model": "NVIDIA H100 80GB HBM3 "}) != sid  # exact values, not slugs


def test_object_names_sort_newest_first() -> None:
    names = [record(n, {}).object_name() for n in range(3)]
    assert sorted(names) == names[::-1]
    assert names[0].endswith("_20261101T020000Z_night-0.json")


def test_record_json_round_trip_and_rejects_other_documents() -> None:
    original = record(1, {"bf16_tflops": 780.0})
    original.verdicts = {"bf16_tflops": "same"}
    again = RunRecord.from_json(json.loads(json.dumps(original.to_json())))
    assert again == original
    with pytest.raises(ValueError):
        RunRecord.from_json({"schema": "k8s-gpu-acceptance/report", "schema_version": "1.0"})


def test_append_then_recent_newest_first(tmp_path: Path) -> None:
    history = History(DirStore(tmp_path))
    for night in range(5):
        where = history.append(record(night, {"bf16_tflops": 780.0 + night}))
    assert where.startswith(str(tmp_path)) and "/history/v1/" in where and "/runs/" in where
    series = record(0, {}).series
    recent = history.recent(series, 3)
    assert [r.run_id for r in recent] == ["night-4", "night-3", "night-2"]
    index = json.loads((tmp_path / "history" / "v1" / series / "index.json").read_text())
    assert index["schema"] == "k8s-gpu-acceptance/history-index" and len(index["runs"]) == 5


def test_index_is_trimmed_but_listing_still_serves_the_window(tmp_path: Path) -> None:
    history = History(DirStore(tmp_path), index_keep=2)
    for night in range(4):
        history.append(record(night, {"bf16_tflops": 780.0}))
    series = record(0, {}).series
    index = json.loads((tmp_path / "history" / "v1" / series / "index.json").read_text())
    assert [r["run_id"] for r in index["runs"]] == ["night-3", "night-2"]
    assert [r.run_id for r in history.recent(series, 4)] == ["night-3", "night-2", "night-1", "night-0"]


def test_a_run_missing_from_the_index_is_still_read(tmp_path: Path) -> None:
    """A writer that died between its two PUTs (or lost the index race) leaves only its run object."""
    store = DirStore(tmp_path)
    history = History(store)
    history.append(record(0, {"bf16_tflops": 780.0}))
    orphan = record(1, {"bf16_tflops": 700.0})
    store.put(
        f"history/v1/{orphan.series}/runs/{orphan.object_name()}", json.dumps(orphan.to_json()).encode()
    )
    assert [r.run_id for r in history.recent(orphan.series, 10)] == ["night-1", "night-0"]


def test_a_damaged_index_is_rebuilt(tmp_path: Path) -> None:
    history = History(DirStore(tmp_path))
    history.append(record(0, {}))
    series = record(0, {}).series
    (tmp_path / "history" / "v1" / series / "index.json").write_text("{not json")
    history.append(record(1, {}))
    assert [r.run_id for r in history.recent(series, 10)] == ["night-1", "night-0"]


def test_concurrent_writers_lose_no_run(tmp_path: Path) -> None:
    """Eight writers at once (eight nightly jobs of one GPU model): no run lost (index + listing)."""
    history = History(DirStore(tmp_path))
    threads = [
        threading.Thread(target=history.append, args=(record(n, {"bf16_tflops": 1.0}),)) for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    series = record(0, {}).series
    assert sorted(r.run_id for r in history.recent(series, 10)) == [f"night-{n}" for n in range(8)]
    index = json.loads((tmp_path / "history" / "v1" / series / "index.json").read_text())
    assert len(index["runs"]) >= 1


def test_dir_store_conditional_put(tmp_path: Path) -> None:
    store = DirStore(tmp_path)
    assert store.put("a/b.json", b"1", if_absent=True)
    assert not store.put("a/b.json", b"2", if_absent=True)
    _, etag = store.get("a/b.json") or (b"", "")
    assert not store.put("a/b.json", b"3", if_match="stale")
    assert store.put("a/b.json", b"4", if_match=etag)
    assert store.get("a/b.json") == (b"4", store.get("a/b.json")[1])  # type: ignore[index]
    with pytest.raises(ValueError):
        store.put("../escape.json", b"x")


def test_assess_third_run_against_the_first_two() -> None:
    earlier = [record(1, {"bf16_tflops": 790.0}), record(0, {"bf16_tflops": 780.0})]
    tonight = record(2, {"bf16_tflops": 600.0, "gpt2_p50_ms": 6.5})
    result = assess(tonight, earlier, Policy())
    bf16 = result.judgements["bf16_tflops"]
    assert bf16.verdict == "worse" and bf16.regression and bf16.baseline is not None
    assert bf16.baseline.median == 785.0 and bf16.baseline.runs == 2
    assert result.judgements["gpt2_p50_ms"].verdict == "no baseline yet"
    assert result.regressions == ["bf16_tflops"] and tonight.regressions == ["bf16_tflops"]
    assert tonight.verdicts == {"bf16_tflops": "worse", "gpt2_p50_ms": "no baseline yet"}
    assert [r.run_id for r in result.compared] == ["night-1", "night-0"]
    document = result.as_dict()
    assert document["regressions"] == ["bf16_tflops"]
    assert {m["metric"] for m in document["metrics"]} >= {"bf16_tflops", "gpt2_decode_step_graph_ms"}


def test_assess_match_and_key_differences() -> None:
    earlier = [record(1, {"bf16_tflops": 790.0}, driver_version="570.1"), record(0, {"bf16_tflops": 780.0})]
    tonight = record(2, {"bf16_tflops": 785.0}, node="gpu-node-9")
    loose = assess(tonight, earlier, Policy())
    assert loose.judgements["bf16_tflops"].verdict == "same"
    assert loose.differences == {"driver_version": ["570.1"], "node": ["gpu-node-1"]}
    strict = assess(tonight, earlier, Policy(), match=("gpu_model", "model", "driver_version"))
    assert strict.judgements["bf16_tflops"].verdict == "no baseline yet"  # only night-0 has the same driver
    other_gpu = assess(record(3, {"bf16_tflops": 1.0}, gpu_model="NVIDIA A10G"), earlier, Policy())
    assert other_gpu.judgements["bf16_tflops"].verdict == "no baseline yet"


def test_assess_consecutive_reads_the_previous_runs_verdict() -> None:
    first = record(2, {"bf16_tflops": 600.0})
    history = [record(1, {"bf16_tflops": 790.0}), record(0, {"bf16_tflops": 780.0})]
    policy = Policy(consecutive=2)
    assert assess(first, history, policy).regressions == []
    assert first.verdicts["bf16_tflops"] == "worse"
    second = record(3, {"bf16_tflops": 600.0})
    assert assess(second, [first, *history], policy).regressions == ["bf16_tflops"]


def test_gating_override() -> None:
    tonight = record(2, {"gpt2_p50_ms": 20.0})
    history = [record(1, {"gpt2_p50_ms": 6.5}), record(0, {"gpt2_p50_ms": 6.6})]
    assert assess(tonight, history, Policy()).regressions == []  # p50 is informational by default
    assert assess(tonight, history, Policy(), gating=("gpt2_p50_ms",)).regressions == ["gpt2_p50_ms"]


def test_slow_recording_is_h100_with_gpt2_slowed_down() -> None:
    """h100-slow.log (DERIVED) is exactly make_slow.py's output, and only GPT-2's figures differ."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_slow", RECORDINGS / "make_slow.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    h100 = (RECORDINGS / "h100.log").read_text(encoding="utf-8")
    slow = (RECORDINGS / "h100-slow.log").read_text(encoding="utf-8")
    assert module.derive(h100) == slow
    fast_figures = key_figures(parse_document(h100), None)
    slow_figures = key_figures(parse_document(slow), None)
    changed = {name for name in fast_figures if fast_figures[name] != slow_figures[name]}
    assert changed == {"gpt2_p50_ms", "gpt2_p95_ms", "gpt2_ttft_ms", "gpt2_tokens_per_s"} | (
        {"gpt2_decode_step_graph_ms"} if "gpt2_decode_step_graph_ms" in fast_figures else set()
    )
    assert slow_figures["gpt2_p50_ms"] == pytest.approx(fast_figures["gpt2_p50_ms"] * 1.5, abs=1e-3)
