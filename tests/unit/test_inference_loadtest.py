"""The load test's arithmetic (k8s_gpu_acceptance/loadtest.py, behind examples/inference/loadtest.py and the
serving check): percentiles, rates, errors, the table, the levels option."""

from __future__ import annotations

import pytest

from k8s_gpu_acceptance import loadtest


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


def test_a_sweep_warms_up_once_then_runs_each_level_with_its_clients():
    calls = []

    def send():
        calls.append(1)
        return (5.0, 2)

    levels = loadtest.sweep(send, [1, 3], per_client=2)
    assert len(calls) == 1 + 1 * 2 + 3 * 2
    assert [(lv.concurrency, lv.requests, lv.ok) for lv in levels] == [(1, 2, 2), (3, 6, 6)]
    assert levels[1].error_count == 0


@pytest.mark.parametrize("text", ["", "1,x", "0,2", "-1"])
def test_bad_levels_are_refused_with_the_expected_form(text):
    with pytest.raises(ValueError, match="client count"):
        loadtest.parse_levels(text)


def test_levels_parse():
    assert loadtest.parse_levels("1, 2,4,8") == [1, 2, 4, 8]
