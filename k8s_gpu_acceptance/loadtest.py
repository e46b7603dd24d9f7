"""The GPT-2 service's load test: a concurrency sweep, end-to-end latency per request. Standard library only.

Owns the arithmetic (nearest-rank percentiles, rates over a level's wall time, errors by kind), the sweep
(clients sending back to back, one warm-up request first) and the text table. How a request travels is the
caller's `send`: plain HTTP for examples/inference/loadtest.py, the API server's service proxy for the
suite's `serving` check (k8s_gpu_acceptance/serving.py). One implementation, two transports.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

PROMPT = "Explain what an LLM is"

Result = tuple[float, int] | str
"""One request: (end-to-end ms, tokens generated), or the kind of error ("HTTP 503", "timeout", ...)."""
Send = Callable[[], Result]


@dataclass
class Level:
    """What one concurrency level measured."""

    concurrency: int
    requests: int
    ok: int
    wall_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    requests_per_s: float
    tokens_per_s: float
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return self.requests - self.ok


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of the values; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(concurrency: int, wall_s: float, results: list[Result]) -> Level:
    """A level's figures from its requests: (latency_ms, new_tokens) per answer, an error kind otherwise."""
    latencies = [r[0] for r in results if not isinstance(r, str)]
    tokens = sum(r[1] for r in results if not isinstance(r, str))
    errors = Counter(r for r in results if isinstance(r, str))

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    return Level(
        concurrency=concurrency,
        requests=len(results),
        ok=len(latencies),
        wall_s=round(wall_s, 3),
        p50_ms=rounded(percentile(latencies, 50)),
        p95_ms=rounded(percentile(latencies, 95)),
        p99_ms=rounded(percentile(latencies, 99)),
        requests_per_s=round(len(latencies) / wall_s, 2) if wall_s > 0 else 0.0,
        tokens_per_s=round(tokens / wall_s, 1) if wall_s > 0 else 0.0,
        errors=dict(errors),
    )


def run_level(send: Send, concurrency: int, per_client: int) -> Level:
    """`concurrency` clients, each sending `per_client` requests back to back."""

    def client(_index: int) -> list[Result]:
        return [send() for _ in range(per_client)]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = [r for batch in pool.map(client, range(concurrency)) for r in batch]
    return summarize(concurrency, time.perf_counter() - started, results)


def sweep(send: Send, levels: list[int], per_client: int) -> list[Level]:
    """One warm-up request (first-call costs), then every level in order."""
    send()
    return [run_level(send, n, per_client) for n in levels]


def parse_levels(text: str) -> list[int]:
    """`1,2,4,8` -> [1, 2, 4, 8]; ValueError naming the problem for anything else."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{text!r}: expected a comma list of client counts, e.g. 1,2,4,8") from None
    if not levels or any(n < 1 for n in levels):
        raise ValueError(f"{text!r}: expected at least one client count, each at least 1")
    return levels


def table(levels: list[Level]) -> str:
    """The sweep as a fixed-width text table."""
    names = ("p50 ms", "p95 ms", "p99 ms")
    head = (
        f"{'clients':>7} {'ok/sent':>8} "
        + " ".join(f"{n:>8}" for n in names)
        + f" {'req/s':>7} {'tok/s':>8}  errors"
    )
    rows = [head]
    for lv in levels:
        cells = [lv.p50_ms, lv.p95_ms, lv.p99_ms]
        p50, p95, p99 = (f"{c:8.1f}" if c is not None else f"{'-':>8}" for c in cells)
        errors = ", ".join(f"{k} x{v}" for k, v in lv.errors.items()) or "-"
        rows.append(
            f"{lv.concurrency:>7} {f'{lv.ok}/{lv.requests}':>8} {p50} {p95} {p99} "
            f"{lv.requests_per_s:7.2f} {lv.tokens_per_s:8.1f}  {errors}"
        )
    return "\n".join(rows)
