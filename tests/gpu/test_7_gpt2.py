"""Layer 7, GPT-2 generation: a real transformers model generates on the GPU within the latency budget."""

import pytest

from k8s_gpu_acceptance.checks import fail, passed_probe_layer
from k8s_gpu_acceptance.diagnosis import diagnose_cpu_fallback, diagnose_threshold

pytestmark = [pytest.mark.gpu, pytest.mark.gpt2]


def test_gpt2_generates_on_gpu_within_latency_budget(probe_run, gpu_settings, run_state):
    m = passed_probe_layer(probe_run, "gpt2", gpu_settings, run_state.target).metrics
    if m.get("cpu_fallback") or not str(m.get("device", "")).startswith("cuda"):
        fail(diagnose_cpu_fallback(str(m.get("device")), str(m.get("model"))))
    checks = [
        (
            "p95 per-token latency",
            float(m["token_latency_ms_p95"]),
            gpu_settings.max_token_latency_ms,
            "ms",
            True,
            "--max-token-latency-ms",
        ),
        ("time to first token", float(m["ttft_ms"]), gpu_settings.max_ttft_ms, "ms", True, "--max-ttft-ms"),
        (
            "throughput",
            float(m["tokens_per_s"]),
            gpu_settings.min_tokens_per_s,
            "tokens/s",
            False,
            "--min-tokens-per-s",
        ),
    ]
    for what, measured, limit, unit, higher_is_worse, option in checks:
        if (measured > limit) if higher_is_worse else (measured < limit):
            fail(
                diagnose_threshold(
                    "gpt2", what, measured, limit, unit, higher_is_worse=higher_is_worse, option=option
                )
            )
