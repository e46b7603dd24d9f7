"""gpu_perf's sizing of a measurement that must last long enough to overlap with other processes."""

from gpu_probe.__main__ import build_parser
from gpu_probe.layers.gpu_perf import reps_for


def test_default_run_is_the_fixed_short_one():
    assert reps_for(0.0, 1.4, 10) == 10
    assert build_parser().parse_args([]).perf_seconds == 0.0


def test_min_seconds_sizes_the_run():
    assert reps_for(2.0, 1.4, 10) == 1429  # 2000 ms / 1.4 ms per matmul, rounded up
    assert reps_for(0.001, 1.4, 10) == 10  # never fewer than the fixed minimum
    assert reps_for(2.0, 0.0, 10) == 10  # a failed calibration never divides by zero
