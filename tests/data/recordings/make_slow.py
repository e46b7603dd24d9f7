"""Make h100-slow.log: h100.log with GPT-2 generation made 1.5x slower. DERIVED, not measured.

What a nightly regression looks like to the suite: the same H100, same driver and versions, but GPT-2 takes
1.5x as long per token (as after a throttled clock, a noisy neighbour or a bad torch build). Every GPT-2
latency in the document (per-token latencies, p50, p95, time to first token, and any other figure of the
gpt2 layer whose name has `_ms`, such as the regression statistic decode_step_graph_ms and its
p10/p90) is multiplied by SLOWDOWN, tokens/s divided by it; every
other layer, the identity and the stderr lines are left exactly as recorded. The testbed serves it as a pod
log (pod annotation `testbed.k8s-gpu-acceptance.io/recording=h100-slow`) for the regression self-test.
Re-run after re-recording h100.log:
    python tests/data/recordings/make_slow.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "h100.log"
TARGET = HERE / "h100-slow.log"
SLOWDOWN = 1.5


def _scaled(value: Any, factor: float) -> Any:
    if isinstance(value, list):
        return [_scaled(v, factor) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return round(value * factor, 3)
    return value


def slow_down(metrics: dict[str, Any], factor: float) -> dict[str, Any]:
    """GPT-2 metrics as if generation took `factor` times as long (load time and memory unchanged)."""
    out = {key: _scaled(value, factor) if "_ms" in key else value for key, value in metrics.items()}
    if isinstance(metrics.get("tokens_per_s"), (int, float)):
        out["tokens_per_s"] = round(metrics["tokens_per_s"] / factor, 2)
    return out


def derive(text: str, factor: float = SLOWDOWN) -> str:
    """The log with its document's gpt2 metrics slowed down; the lines around the document unchanged."""
    start = text.index('{\n  "schema_version"')
    decoder = json.JSONDecoder()
    document, length = decoder.raw_decode(text[start:])
    gpt2 = document["layers"]["gpt2"]
    gpt2["metrics"] = slow_down(gpt2["metrics"], factor)
    body = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)
    return text[:start] + body + text[start + length :]


def main() -> None:
    """Write h100-slow.log next to h100.log."""
    TARGET.write_text(derive(SOURCE.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {TARGET} (GPT-2 {SLOWDOWN}x slower than {SOURCE.name}; DERIVED, not measured)")


if __name__ == "__main__":
    main()
