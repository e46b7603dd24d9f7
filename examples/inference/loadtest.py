"""Load test of the GPT-2 service over plain HTTP: a concurrency sweep (1, 2, 4, 8 clients).

Per level: p50/p95/p99 end-to-end latency (ms), requests/s and generated tokens/s over the level's wall time,
and the errors (HTTP status, timeouts, refused connections) by kind. Every client sends its requests back to
back; a level lasts until each client has sent --requests-per-client. The arithmetic and the sweep are the
suite's (k8s_gpu_acceptance/loadtest.py, also used by its `serving` check through the API server's service
proxy); this file adds the HTTP transport and the command line. Standard library only.

    python examples/inference/loadtest.py http://127.0.0.1:8080 --levels 1,2,4,8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

try:
    from k8s_gpu_acceptance.loadtest import PROMPT, Result, parse_levels, sweep, table
except ImportError:  # a checkout where the suite is not installed: the package is two folders up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from k8s_gpu_acceptance.loadtest import PROMPT, Result, parse_levels, sweep, table


def one_request(url: str, new_tokens: int, timeout_s: float) -> Result:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="concurrency sweep against the GPT-2 service")
    parser.add_argument("url")
    parser.add_argument("--levels", default="1,2,4,8")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--json", help="write the levels as JSON to this file")
    args = parser.parse_args(argv)
    try:
        levels = parse_levels(args.levels)
    except ValueError as exc:
        parser.error(f"--levels {exc}")
    result = sweep(
        lambda: one_request(args.url, args.new_tokens, args.timeout), levels, args.requests_per_client
    )
    print(table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([asdict(lv) for lv in result], f, indent=2)
    return 1 if any(lv.errors for lv in result) else 0


if __name__ == "__main__":
    raise SystemExit(main())
