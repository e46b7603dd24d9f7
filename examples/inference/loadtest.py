"""Load test of the GPT-2 service: a concurrency sweep (1, 2, 4, 8 clients), end-to-end latency per request.

Per level: p50/p95/p99 latency (ms), requests/s and generated tokens/s over the level's wall time, and the
errors (HTTP status, timeouts, refused connections) by kind. Every client sends its requests back to back;
a level lasts until each client has sent --requests-per-client. Standard library only.

    python examples/inference/loadtest.py http://127.0.0.1:8080 --levels 1,2,4,8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

PROMPT = "Explain what an LLM is"


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


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of the values; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(concurrency: int, wall_s: float, results: list[tuple[float, int] | str]) -> Level:
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


def one_request(url: str, new_tokens: int, timeout_s: float) -> tuple[float, int] | str:
    """POST /generate once: (end-to-end ms, tokens generated), or the kind of error."""
    body = json.dumps({"prompt": PROMPT, "max_new_tokens": new_tokens}).encode()
    request = urllib.request.Request(
        url.rstrip("/") + "/generate", data=body, headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except TimeoutError:
        return "timeout"
    except (urllib.error.URLError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        return "timeout" if isinstance(reason, TimeoutError) else f"connection: {type(reason).__name__}"
    return (time.perf_counter() - started) * 1000, int(answer.get("new_tokens", 0))


def run_level(url: str, concurrency: int, per_client: int, new_tokens: int, timeout_s: float) -> Level:
    """`concurrency` clients, each sending `per_client` requests back to back."""

    def client(_index: int) -> list[tuple[float, int] | str]:
        return [one_request(url, new_tokens, timeout_s) for _ in range(per_client)]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = [r for batch in pool.map(client, range(concurrency)) for r in batch]
    return summarize(concurrency, time.perf_counter() - started, results)


def sweep(url: str, levels: list[int], per_client: int, new_tokens: int, timeout_s: float) -> list[Level]:
    """One warm-up request (model load, first-call costs), then every level in order."""
    one_request(url, new_tokens, timeout_s)
    return [run_level(url, n, per_client, new_tokens, timeout_s) for n in levels]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="concurrency sweep against the GPT-2 service")
    parser.add_argument("url")
    parser.add_argument("--levels", default="1,2,4,8")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--json", help="write the levels as JSON to this file")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    result = sweep(args.url, levels, args.requests_per_client, args.new_tokens, args.timeout)
    print(table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([asdict(lv) for lv in result], f, indent=2)
    return 1 if any(lv.errors for lv in result) else 0


if __name__ == "__main__":
    raise SystemExit(main())
