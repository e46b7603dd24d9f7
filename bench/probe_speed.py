"""The probe's speed and stability, old vs new, in one sitting: whole runs, import floors, no-network failure.

Measures on the host it runs on (the H100 for issue 11 / 12 item 2b, or any CPU host for a same-run baseline):
- whole warm runs of the OLD probe (a `git archive` of a baseline commit, --baseline) and of the NEW probe
  (this checkout), interleaved old/new so drift hits both alike; median of --runs each;
- the import floors: `import torch` + transformers' GPT-2 model class the ordinary way (what the old probe
  imported) and the lean way (gpu_probe.lean_import, what the new probe imports), fresh processes, median;
- the no-network failure: the new probe's gpt2 layer with the default hub model and no route to the hub (the
  host's own network state, and a black-holed HF_ENDPOINT), wall time and the layer's verdict;
- the 5-run spread of the gpt2 regression metric (decode_step_graph_ms) and, for comparison, of the
  user-facing per-token p50, as (max - min) / median over the new probe's runs (old runs: p50 only).
It measures and reports; it never asserts and exits 0 whatever the figures (goals are printed beside them).

    python3 bench/probe_speed.py --out OUTDIR [--baseline .baseline/container] [--runs 5] [--model M]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NEW_PATH = REPO / "container"
DEFAULT_BASELINE = REPO / ".baseline" / "container"
BLACKHOLE_ENDPOINT = "https://10.255.255.1"  # private, unrouted: a connect hangs until the timeout
GOAL_WHOLE_RUN_S = 10.0
GOAL_NO_NETWORK_S = 5.0
GOAL_SPREAD = 0.05
FLOOR_PLAIN = "import torch; from transformers import GPT2LMHeadModel; torch.cuda.is_available()"
FLOOR_LEAN = (
    "import torch; from gpu_probe.lean_import import import_gpt2_class; import_gpt2_class(); "
    "torch.cuda.is_available()"
)
TORCH_ONLY = "import torch; torch.cuda.is_available()"


def log(message: str) -> None:
    """Progress on stderr, with the time since the bench started."""
    print(f"[bench {time.perf_counter() - START:6.1f}s] {message}", file=sys.stderr, flush=True)


START = time.perf_counter()
LOGS_DIR: Path | None = None


def run(command: list[str], pythonpath: Path, env: dict[str, str] | None = None, timeout: float = 300) -> Any:
    """Wall seconds, exit code, stdout and stderr of one fresh process."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ.update({"PYTHONPATH": str(pythonpath), "PYTHONUNBUFFERED": "1", **(env or {})})
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=environ, timeout=timeout, check=False
        )
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = 124, _text(exc.stdout), _text(exc.stderr) + f"\n(killed after {timeout} s)"
    return {"wall_s": time.perf_counter() - started, "rc": code, "stdout": out, "stderr": err}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")


def document(stdout: str) -> dict[str, Any]:
    """The probe's JSON document from stdout ({} if there is none)."""
    start = stdout.find("{")
    try:
        return json.loads(stdout[start:]) if start >= 0 else {}
    except ValueError:
        return {}


def spread(values: list[float]) -> float | None:
    """(max - min) / median: the whole range of the runs relative to their middle."""
    values = [v for v in values if isinstance(v, (int, float))]
    if len(values) < 2 or statistics.median(values) == 0:
        return None
    return (max(values) - min(values)) / statistics.median(values)


def median(values: list[float]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def probe_run(label: str, path: Path, model: str, index: int) -> dict[str, Any]:
    """One whole probe run (all layers) and the figures the summary needs."""
    result = run([sys.executable, "-m", "gpu_probe", "--json", "--model", model], path)
    if LOGS_DIR is not None:  # the latest run of each probe, stdout + stderr as a pod log would hold them
        (LOGS_DIR / f"{label.split('-')[0]}-last.log").write_text(result["stderr"] + result["stdout"])
    doc = document(result["stdout"])
    layers = doc.get("layers", {})
    gpt2 = layers.get("gpt2", {}).get("metrics", {})
    entry = {
        "probe": label,
        "index": index,
        "wall_s": round(result["wall_s"], 3),
        "rc": result["rc"],
        "document_duration_s": doc.get("duration_s"),
        "layer_s": {name: layer.get("duration_s") for name, layer in layers.items()},
        "status": {name: layer.get("status") for name, layer in layers.items()},
        "import_s": gpt2.get("transformers_import_s"),
        "token_latency_ms_p50": gpt2.get("token_latency_ms_p50"),
        "ttft_ms": gpt2.get("ttft_ms"),
        "tokens_per_s": gpt2.get("tokens_per_s"),
        "decode_step_graph_ms": gpt2.get("decode_step_graph_ms"),
        "device": gpt2.get("device"),
    }
    if not doc:
        entry["stderr_tail"] = result["stderr"][-1500:]
    log(
        f"{label} run {index}: {entry['wall_s']:.2f} s rc={entry['rc']} layers={entry['layer_s']} "
        f"p50={entry['token_latency_ms_p50']} graph={entry['decode_step_graph_ms']}"
    )
    return entry


def floors(repeats: int) -> dict[str, Any]:
    """Fresh-process import floors, median of `repeats` each."""
    out: dict[str, Any] = {}
    for name, code in (("torch", TORCH_ONLY), ("lean_gpt2", FLOOR_LEAN), ("plain_gpt2", FLOOR_PLAIN)):
        walls = []
        for _ in range(repeats):
            result = run([sys.executable, "-c", code], NEW_PATH)
            walls.append(result["wall_s"])
            if result["rc"] != 0:
                out[f"{name}_error"] = result["stderr"][-800:]
        out[name] = {"median_s": round(statistics.median(walls), 3), "all_s": [round(w, 3) for w in walls]}
        log(f"import floor {name}: median {out[name]['median_s']:.2f} s of {walls}")
    return out


def no_network(model_timeout: float) -> dict[str, Any]:
    """The new probe's gpt2 layer with the default hub model and no route to the hub."""
    cases = {
        "host_network": {},  # whatever this host has (the H100 host and this CPU host: no route out)
        "blackholed_endpoint": {"HF_ENDPOINT": BLACKHOLE_ENDPOINT},
    }
    out: dict[str, Any] = {}
    for name, env in cases.items():
        environ = {"HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "", **env}
        command = [sys.executable, "-m", "gpu_probe", "--json", "--layers", "gpt2"]
        result = run(command, NEW_PATH, environ, model_timeout)
        layer = document(result["stdout"]).get("layers", {}).get("gpt2", {})
        out[name] = {
            "wall_s": round(result["wall_s"], 3),
            "rc": result["rc"],
            "layer_s": layer.get("duration_s"),
            "status": layer.get("status"),
            "hub_check": layer.get("metrics", {}).get("hub_check"),
            "error": layer.get("error"),
            "fix": (layer.get("diagnosis") or {}).get("fix"),
        }
        case = out[name]
        log(f"no network ({name}): {case['wall_s']:.2f} s, gpt2 {case['status']} in {case['layer_s']} s")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for probe-speed.json and probe-speed.txt")
    parser.add_argument("--baseline", default=str(DEFAULT_BASELINE), help="folder holding the old gpu_probe")
    parser.add_argument("--runs", type=int, default=5, help="whole runs of each probe (5)")
    parser.add_argument(
        "--floor-runs", type=int, default=2, help="fresh-process import floors, each kind (2)"
    )
    parser.add_argument("--model", default="random-gpt2-small")
    parser.add_argument("--skip-old", action="store_true", help="no baseline runs (no baseline folder)")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    global LOGS_DIR
    LOGS_DIR = out_dir
    baseline = Path(args.baseline).resolve()
    have_old = not args.skip_old and (baseline / "gpu_probe" / "__main__.py").is_file()
    if not have_old and not args.skip_old:
        log(f"no baseline at {baseline}/gpu_probe: old-probe runs skipped (see bench/h100_probe.sh)")
    old_label = baseline if have_old else "-"
    log(f"python {platform.python_version()} at {sys.executable}; new {NEW_PATH}; old {old_label}")

    # Warm-up: one run of each fills the page cache and writes .pyc files (the figures are warm runs).
    log("warm-up runs (not counted)")
    probe_run("new-warmup", NEW_PATH, args.model, 0)
    if have_old:
        probe_run("old-warmup", baseline, args.model, 0)
    runs: dict[str, list[dict[str, Any]]] = {"new": [], "old": []}
    for index in range(1, args.runs + 1):
        if have_old:
            runs["old"].append(probe_run("old", baseline, args.model, index))
        runs["new"].append(probe_run("new", NEW_PATH, args.model, index))
    floor = floors(args.floor_runs)
    failure = no_network(120)

    summary = summarize(runs, floor, failure)
    report = {
        "host": platform.node(),
        "python": platform.python_version(),
        "model": args.model,
        "runs": runs,
        "floors": floor,
        "no_network": failure,
        "summary": summary,
        "bench_s": round(time.perf_counter() - START, 1),
    }
    (out_dir / "probe-speed.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    text = render(report)
    (out_dir / "probe-speed.txt").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def summarize(runs: dict[str, list[dict[str, Any]]], floor: dict[str, Any], failure: dict[str, Any]) -> dict:
    """Medians, ratios and spreads."""
    new, old = runs["new"], runs["old"]
    new_med = median([r["wall_s"] for r in new])
    old_med = median([r["wall_s"] for r in old])
    lean, plain = floor["lean_gpt2"]["median_s"], floor["plain_gpt2"]["median_s"]
    graph = [r["decode_step_graph_ms"] for r in new]
    return {
        "new_whole_run_median_s": new_med,
        "old_whole_run_median_s": old_med,
        "new_over_old": round(new_med / old_med, 3) if new_med and old_med else None,
        "new_over_lean_floor": round(new_med / lean, 3) if new_med and lean else None,
        "old_over_plain_floor": round(old_med / plain, 3) if old_med and plain else None,
        "lean_floor_over_plain_floor": round(lean / plain, 3) if lean and plain else None,
        "regression_metric": "decode_step_graph_ms",
        "regression_metric_values": graph,
        "regression_metric_spread": _round(spread(graph)),
        "new_p50_values": [r["token_latency_ms_p50"] for r in new],
        "new_p50_spread": _round(spread([r["token_latency_ms_p50"] for r in new])),
        "old_p50_values": [r["token_latency_ms_p50"] for r in old],
        "old_p50_spread": _round(spread([r["token_latency_ms_p50"] for r in old])),
        "no_network_wall_s": {name: case["wall_s"] for name, case in failure.items()},
        "goal_whole_run_met": new_med is not None and new_med <= GOAL_WHOLE_RUN_S,
        "goal_no_network_met": all(
            case["layer_s"] is not None and case["layer_s"] <= GOAL_NO_NETWORK_S for case in failure.values()
        ),
        "goal_spread_met": spread(graph) is not None and (spread(graph) or 1.0) <= GOAL_SPREAD,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def render(report: dict[str, Any]) -> str:
    """The human summary (also written to probe-speed.txt)."""
    s = report["summary"]
    floor = report["floors"]
    n = len(report["runs"]["new"])

    def fmt(value: Any, unit: str = " s") -> str:
        return "-" if value is None else f"{value:.2f}{unit}"

    lines = [
        f"probe speed on {report['host']} (python {report['python']}, model {report['model']}, "
        f"{n} runs each)",
        f"whole warm run, median:  new {fmt(s['new_whole_run_median_s'])}   "
        f"old {fmt(s['old_whole_run_median_s'])}"
        f"   new/old {s['new_over_old']}   (goal new <= {GOAL_WHOLE_RUN_S:.0f} s: "
        f"{'met' if s['goal_whole_run_met'] else 'MISSED'})",
        f"import floors, median:   torch {fmt(floor['torch']['median_s'])}   lean GPT-2 (new) "
        f"{fmt(floor['lean_gpt2']['median_s'])}   plain GPT-2 (old) {fmt(floor['plain_gpt2']['median_s'])}"
        f"   lean/plain {s['lean_floor_over_plain_floor']}",
        f"run / its floor:         new/lean {s['new_over_lean_floor']}   "
        f"old/plain {s['old_over_plain_floor']}",
    ]
    for name, case in report["no_network"].items():
        check = case.get("hub_check") or {}
        lines.append(
            f"no network ({name}): whole run {fmt(case['wall_s'])}, "
            f"gpt2 {case['status']} in {fmt(case['layer_s'])}"
            f" (hub check {fmt(check.get('seconds'))}; goal <= {GOAL_NO_NETWORK_S:.0f} s: "
            f"{'met' if case['layer_s'] is not None and case['layer_s'] <= GOAL_NO_NETWORK_S else 'MISSED'})"
        )
        lines.append(f"    error: {case['error']}")
    lines += [
        f"regression metric decode_step_graph_ms over {n} runs: {s['regression_metric_values']} -> spread "
        f"{_pct(s['regression_metric_spread'])} (goal <= 5%: {'met' if s['goal_spread_met'] else 'MISSED'})",
        f"user-facing p50 ms, new: {s['new_p50_values']} -> spread {_pct(s['new_p50_spread'])}; "
        f"old: {s['old_p50_values']} -> spread {_pct(s['old_p50_spread'])}",
        "layer seconds (new, last run): " + json.dumps(report["runs"]["new"][-1]["layer_s"] if n else {}),
        f"bench took {report['bench_s']} s",
    ]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


if __name__ == "__main__":
    raise SystemExit(main())
