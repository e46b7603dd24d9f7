"""Layer 8, GPU performance: matmul TFLOP/s and memory bandwidth are a sane fraction of the spec."""

import warnings

import pytest

from k8s_gpu_acceptance.checks import fail, passed_probe_layer
from k8s_gpu_acceptance.diagnosis import diagnose_threshold

pytestmark = [pytest.mark.gpu, pytest.mark.gpu_perf]


def test_gpu_throughput_and_bandwidth_near_spec(probe_run, gpu_settings, run_state):
    m = passed_probe_layer(probe_run, "gpu_perf", gpu_settings, run_state.target).metrics
    assert float(m["bf16_tflops"]) > 0 and float(m["memory_bandwidth_gbps"]) > 0, "no throughput measured"
    if m.get("tflops_ratio") is None or m.get("bandwidth_ratio") is None:
        warnings.warn(
            f"gpu_perf: no reference spec for {m.get('device_name')!r}: measured "
            f"{m['bf16_tflops']:.1f} TFLOP/s and {m['memory_bandwidth_gbps']:.0f} GB/s, ratios not checked",
            stacklevel=1,
        )
        return
    for what, ratio, limit, option in (
        (
            "bf16 matmul TFLOP/s / spec",
            float(m["tflops_ratio"]),
            gpu_settings.min_tflops_ratio,
            "--min-tflops-ratio",
        ),
        (
            "memory bandwidth / spec",
            float(m["bandwidth_ratio"]),
            gpu_settings.min_bandwidth_ratio,
            "--min-bandwidth-ratio",
        ),
    ):
        if ratio < limit:
            fail(
                diagnose_threshold("gpu_perf", what, ratio, limit, "x", higher_is_worse=False, option=option)
            )
