"""The load test's arithmetic (examples/inference/loadtest.py): percentiles, rates, errors, the table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "examples" / "inference" / "loadtest.py"
spec = importlib.util.spec_from_file_location("loadtest", PATH)
assert spec and spec.loader
loadtest = importlib.util.module_from_spec(spec)
sys.modules["loadtest"] = loadtest
spec.loader.exec_module(loadtest)


def test_nearest_rank_percentiles():
    values = [float(v) for v in range(1, 101)]
    assert loadtest.percentile(values, 50) == 50.0
    assert loadtest.percentile(values, 95) == 95.0
    assert loadtest.percentile(values, 99) == 99.0
    assert loadtest.percentile([7.0], 99) == 7.0
    assert loadtest.percentile([], 50) is None


def test_a_level_counts_answers_tokens_and_errors_over_its_wall_time():
    level = loadtest.summarize(4, 2.0, [(100.0, 16), (300.0, 16), "HTTP 503", "timeout", (200.0, 8)])
    assert (level.requests, level.ok) == (5, 3)
    assert (level.p50_ms, level.p99_ms) == (200.0, 300.0)
    assert level.requests_per_s == 1.5 and level.tokens_per_s == 20.0
    assert level.errors == {"HTTP 503": 1, "timeout": 1}


def test_a_level_with_only_errors_has_no_latency():
    level = loadtest.summarize(1, 1.0, ["connection: ConnectionRefusedError"])
    assert level.ok == 0 and level.p50_ms is None and level.requests_per_s == 0.0
    assert "connection: ConnectionRefusedError x1" in loadtest.table([level])


@pytest.mark.parametrize("levels", [[1], [1, 2, 4, 8]])
def test_the_table_has_a_row_per_level(levels):
    rows = loadtest.table([loadtest.summarize(n, 1.0, [(10.0, 4)] * n) for n in levels]).splitlines()
    assert rows[0].split()[:2] == ["clients", "ok/sent"] and len(rows) == 1 + len(levels)
