"""Regression detection rules: baseline median, MAD band, relative floor, direction, consecutive nights."""

from __future__ import annotations

import pytest

from k8s_gpu_acceptance.regression import MAD_TO_SIGMA, Policy, baseline, judge

POLICY = Policy(window=10, min_runs=2, band_mads=3.0, min_change=0.10, consecutive=1)


def test_baseline_is_median_and_scaled_mad_of_the_newest_window() -> None:
    history = [10.0, 12.0, 11.0, 100.0, 9.0]  # newest first; one wild night
    base = baseline(history, Policy(window=4, min_runs=2))
    assert base is not None
    assert base.values == (10.0, 12.0, 11.0, 100.0)  # the 5th is outside the window
    assert base.median == 11.5  # the outlier moves the median by half a step, not by 22
    assert base.mad == pytest.approx(1.0 * MAD_TO_SIGMA)  # |dev| = 1.5, 0.5, 0.5, 88.5 -> median 1.0
    assert base.band == pytest.approx(max(3 * 1.0 * MAD_TO_SIGMA, 0.1 * 11.5))


def test_too_few_runs_is_no_baseline_yet() -> None:
    verdict = judge("x", 10.0, [10.0], "lower", POLICY)
    assert verdict.verdict == "no baseline yet"
    assert verdict.baseline is None
    assert "1 comparable run(s), 2 needed" in verdict.note
    assert judge("x", 10.0, [], "lower", POLICY).verdict == "no baseline yet"


def test_non_finite_history_values_do_not_count() -> None:
    assert judge("x", 10.0, [10.0, None, float("nan")], "lower", POLICY).verdict == "no baseline yet"


def test_relative_floor_keeps_a_quiet_history_from_flagging_a_small_wobble() -> None:
    quiet = [10.0, 10.0, 10.0, 10.0]  # MAD 0
    assert judge("x", 10.9, quiet, "lower", POLICY).verdict == "same"  # +9 % < 10 % floor
    worse = judge("x", 11.2, quiet, "lower", POLICY)
    assert worse.verdict == "worse" and worse.regression
    assert worse.change == pytest.approx(0.12)


def test_noise_band_from_mad_widens_for_a_noisy_history() -> None:
    noisy = [10.0, 14.0, 8.0, 12.0, 9.0, 13.0]  # median 11, MAD 2 -> band 3*2*1.4826 = 8.9
    assert judge("x", 18.0, noisy, "lower", POLICY).verdict == "same"
    assert judge("x", 21.0, noisy, "lower", POLICY).verdict == "worse"


@pytest.mark.parametrize(
    ("direction", "value", "expected"),
    [
        ("lower", 5.0, "better"),
        ("lower", 20.0, "worse"),
        ("higher", 20.0, "better"),
        ("higher", 5.0, "worse"),
    ],
)
def test_direction_decides_better_or_worse(direction: str, value: float, expected: str) -> None:
    assert judge("x", value, [10.0, 10.0, 10.0], direction, POLICY).verdict == expected  # type: ignore[arg-type]


def test_a_non_gating_figure_is_worse_but_no_regression() -> None:
    verdict = judge("x", 20.0, [10.0, 10.0], "lower", POLICY, gates=False)
    assert verdict.verdict == "worse" and not verdict.regression
    assert "informational" in verdict.note


def test_consecutive_two_needs_the_previous_night_worse_too() -> None:
    policy = Policy(consecutive=2)
    first = judge("x", 20.0, [10.0, 10.0, 10.0], "lower", policy, previous_verdict="same")
    assert first.verdict == "worse" and not first.regression
    assert "seen again" in first.note
    second = judge("x", 20.0, [20.0, 10.0, 10.0], "lower", policy, previous_verdict="worse")
    assert second.verdict == "worse" and second.regression


def test_as_dict_carries_the_baseline_and_change_in_percent() -> None:
    data = judge("x", 15.0, [10.0, 10.0, 10.0], "lower", POLICY).as_dict()
    assert data["verdict"] == "worse" and data["change_pct"] == 50.0 and data["regression"] is True
    assert data["baseline"]["median"] == 10.0 and data["baseline"]["runs"] == 3  # type: ignore[index]
    assert data["baseline"]["high"] == pytest.approx(11.0)  # type: ignore[index]


def test_not_measured_tonight_is_no_verdict() -> None:
    verdict = judge("x", None, [10.0, 10.0], "lower", POLICY)
    assert verdict.verdict == "no baseline yet" and verdict.note == "not measured in this run"


@pytest.mark.parametrize(
    "kwargs",
    [{"window": 0}, {"min_runs": 5, "window": 3}, {"min_change": 1.5}, {"band_mads": -1}, {"consecutive": 3}],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Policy(**kwargs)  # type: ignore[arg-type]
