"""Command line: python -m gpu_probe [--layers a,b] [--json] [--model M] [--new-tokens N] [--repeats R].

With --json, stdout carries exactly one JSON document and nothing else: while layers run, file descriptor 1
points at stderr, so even native libraries that print cannot corrupt the document.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from gpu_probe import PROBE_NAME, __version__
from gpu_probe.core import Options, run_probe
from gpu_probe.document import EXIT_USAGE, LAYER_NAMES, render_document


def _layers(value: str) -> tuple[str, ...]:
    """--layers driver,nvidia_smi -> ('driver', 'nvidia_smi'), refusing unknown names."""
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in LAYER_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown layer(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(LAYER_NAMES)}"
        )
    return names


def _positive(value: str) -> int:
    """A positive integer argument."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The probe's argument parser (usage errors exit 2, per the contract)."""
    parser = argparse.ArgumentParser(prog="python -m gpu_probe", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layers",
        type=_layers,
        default=LAYER_NAMES,
        help=f"comma-separated layers to measure (default: all: {','.join(LAYER_NAMES)})",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON document (default: a summary)")
    parser.add_argument(
        "--model",
        default=None,
        help="hub id, local path, tiny-random-gpt2 or random-gpt2-small "
        "(default: /models/gpt2 if it exists, else openai-community/gpt2)",
    )
    parser.add_argument("--new-tokens", type=_positive, default=32, help="new tokens per repeat (32)")
    parser.add_argument("--repeats", type=_positive, default=3, help="timed generate repeats (3)")
    parser.add_argument("--prompt", default="Explain what an LLM is", help="generation prompt")
    parser.add_argument("--seed", type=int, default=1234, help="seed for weights, inputs and matmuls")
    parser.add_argument(
        "--timeout-scale",
        type=float,
        default=1.0,
        help="multiply every layer's time budget (slow nodes, hub downloads)",
    )
    parser.add_argument(
        "--perf-seconds",
        type=float,
        default=0.0,
        help="gpu_perf measures each figure for at least this long (0: a fixed, short run); concurrent "
        "runs on a shared GPU need a few seconds to overlap",
    )
    parser.add_argument("--version", action="version", version=f"{PROBE_NAME} {__version__}")
    return parser


def summary_table(doc: dict[str, Any]) -> str:
    """A short human-readable table: one line per layer with status, time and the headline figure."""
    lines = [
        f"{PROBE_NAME} {__version__} on {doc['identity']['hostname']} (exit {doc['exit_code']})",
        f"{'layer':<11} {'status':<8} {'time':>7}  detail",
    ]
    for name, layer in doc["layers"].items():
        detail = layer["error"] or _headline(name, layer["metrics"])
        lines.append(f"{name:<11} {layer['status']:<8} {layer['duration_s']:>6.2f}s  {detail}")
        if layer["diagnosis"]:
            lines.append(f"{'':<29}fix: {layer['diagnosis']['fix']}")
    return "\n".join(lines)


def _headline(name: str, m: dict[str, Any]) -> str:
    """The figure that matters most for a passing layer."""
    if name == "driver":
        return (
            f"driver {m.get('driver_version')}, CUDA {m.get('cuda_driver_version')}, "
            f"{m.get('gpu_count')} GPU(s)"
        )
    if name == "nvidia_smi":
        return ", ".join(str(g.get("name")) for g in m.get("gpus", [])) or "-"
    if name == "torch_cuda":
        return (
            f"torch {m.get('torch_version')} CUDA {m.get('cuda_runtime_version')}, "
            f"matmul err {m.get('matmul_max_abs_err')}"
        )
    if name == "gpu_perf":
        return (
            f"{m.get('bf16_tflops')} TFLOP/s bf16 (x{m.get('tflops_ratio')}), "
            f"{m.get('memory_bandwidth_gbps')} GB/s (x{m.get('bandwidth_ratio')})"
        )
    if name == "gpt2":
        return (
            f"{m.get('model')} on {m.get('device')}: ttft {m.get('ttft_ms')} ms, p50 "
            f"{m.get('token_latency_ms_p50')} ms, {m.get('tokens_per_s')} tok/s"
        )
    return "-"


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, measure, print the document (or summary); return the contract's exit code."""
    args_list = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(args_list)
    except SystemExit as exc:  # argparse: usage errors -> 2, --help/--version -> 0
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    options = Options(
        layers=args.layers,
        model=args.model,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        prompt=args.prompt,
        seed=args.seed,
        timeout_scale=args.timeout_scale,
        perf_seconds=max(0.0, args.perf_seconds),
    )
    sys.stdout.flush()
    saved_stdout = os.dup(1)
    os.dup2(2, 1)  # anything printed while measuring (Python or native) goes to stderr
    try:
        from gpu_probe.layers import LAYER_FUNCS
        from gpu_probe.layers.gpt2 import early_start, prefetch, prefetch_torch

        imports = prefetch if "gpt2" in options.layers else prefetch_torch
        doc = run_probe(options, LAYER_FUNCS, args_list, prefetch=imports, early=early_start)
    finally:
        sys.stdout.flush()
        os.dup2(saved_stdout, 1)
        os.close(saved_stdout)
    text = render_document(doc) if args.json else summary_table(doc)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return int(doc["exit_code"])


def entrypoint() -> None:
    """Exit hard after printing: an abandoned (timed-out) layer thread must not keep the process alive."""
    code = main()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entrypoint()
