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
    # A multi-GPU pod measured each of its GPUs (`per_gpu`); one slow GPU fails the layer, named.
    for gpu in m.get("per_gpu") or [m]:
        where = f" (GPU {gpu['index']}, {gpu['device_name']})" if "index" in gpu else ""
        for what, ratio, limit, option in (
            (
                "bf16 matmul TFLOP/s / spec",
                gpu["tflops_ratio"],
                gpu_settings.min_tflops_ratio,
                "--min-tflops-ratio",
            ),
            (
                "memory bandwidth / spec",
                gpu["bandwidth_ratio"],
                gpu_settings.min_bandwidth_ratio,
                "--min-bandwidth-ratio",
            ),
        ):
            if ratio is not None and float(ratio) < limit:
                fail(
                    diagnose_threshold(
                        "gpu_perf",
                        what + where,
                        float(ratio),
                        limit,
                        "x",
                        higher_is_worse=False,
                        option=option,
                    )
                )
