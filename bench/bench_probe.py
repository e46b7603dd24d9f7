"""How far the probe's whole run is from its floor: importing torch and transformers' GPT-2 model class.

Both are measured in the same run on the same host, as fresh processes, best of N; the ratio (probe wall /
import floor) is what to watch. The issue's goal is a whole warm run under 15 s on an H100: the absolute
figures are printed for that, never asserted.

    PYTHONPATH=container python3 bench/bench_probe.py [--model tiny-random-gpt2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) of the child, and its stdout."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "container"), os.environ.get("PYTHONPATH")])),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
    return wall, peak, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random-gpt2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    # The probe's own imports (gpu_probe.layers.gpt2.prefetch): transformers is lazy, the model class is not.
    floor_cmd = [
        sys.executable,
        "-c",
        "import torch; from transformers import GPT2LMHeadModel, StoppingCriteria; torch.cuda.is_available()",
    ]
    probe_cmd = [sys.executable, "-m", "gpu_probe", "--json", "--model", args.model]
    timed(floor_cmd)  # warm the page cache for both
    floors = [timed(floor_cmd)[0] for _ in range(args.repeats)]
    runs = [timed(probe_cmd) for _ in range(args.repeats)]
    floor = min(floors)
    best = min(r[0] for r in runs)
    document = json.loads(runs[-1][2]) if runs[-1][2].strip().startswith("{") else {}
    layers = {n: round(entry.get("duration_s", 0), 2) for n, entry in (document.get("layers") or {}).items()}
    print(f"import floor (torch + GPT2LMHeadModel): best {floor:.2f} s of {args.repeats}")
    print(
        f"probe whole run ({args.model}):       best {best:.2f} s of {args.repeats}, "
        f"peak RSS (max over runs) {runs[-1][1] / 1024:.0f} MiB"
    )
    print(f"ratio probe / import floor:          {best / floor:.2f}x")
    print(f"layer durations (last run):          {layers}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
