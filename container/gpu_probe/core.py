"""The probe's engine: run each requested layer in its own time-bounded thread and build the document.

A layer is a function that fills a LayerResult; whatever it raises becomes that layer's error, and a layer
that outlives its time budget is abandoned (reported as an error) so the document is always printed.
"""

from __future__ import annotations

import getpass
import os
import platform
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only in annotations: collections.abc.Callable[...] fails at runtime on Python 3.8
    from collections.abc import Callable

from gpu_probe import PROBE_NAME, __version__
from gpu_probe.document import EXIT_LAYER_FAILED, EXIT_OK, LAYER_NAMES, SCHEMA_VERSION

# Only these variables are recorded: the document must carry nothing secret (no environment dump).
ENV_ALLOWLIST = (
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_REQUIRE_CUDA",
    "NVIDIA_MIG_CONFIG_DEVICES",
    "NVIDIA_MIG_MONITOR_DEVICES",
    "CUDA_VERSION",
    "CUDA_DEVICE_ORDER",
)
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclass
class LayerResult:
    """One layer's entry in the document; layers fill it in place so partial metrics survive an exception."""

    status: str = "error"
    duration_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    diagnosis: dict[str, str] | None = None

    def set(self, status: str, error: str | None = None, diagnosis: dict[str, str] | None = None) -> None:
        """Record the outcome (the last call wins)."""
        self.status, self.error, self.diagnosis = status, error, diagnosis

    def as_dict(self) -> dict[str, Any]:
        """The document's {status, duration_s, metrics, evidence, error, diagnosis}."""
        return {
            "status": self.status,
            "duration_s": round(self.duration_s, 3),
            "metrics": self.metrics,
            "evidence": self.evidence,
            "error": self.error,
            "diagnosis": self.diagnosis,
        }


@dataclass
class Options:
    """What the command line asked for."""

    layers: tuple[str, ...] = LAYER_NAMES
    model: str | None = None
    new_tokens: int = 32
    repeats: int = 3
    prompt: str = "Explain what an LLM is"
    seed: int = 1234
    timeout_scale: float = 1.0
    perf_seconds: float = 0.0


@dataclass
class Context:
    """What a layer may read: the options, the environment snapshot and the results of earlier layers."""

    options: Options
    env: dict[str, str | None]
    in_kubernetes: bool
    results: dict[str, LayerResult] = field(default_factory=dict)
    prefetch: Prefetch | None = None
    prefetch_waited_s: float = 0.0
    hub_check: Any = None  # gpu_probe.hub.BackgroundHubCheck, started at the probe's start for a hub model


if TYPE_CHECKING:
    LayerFunc = Callable[[Context, LayerResult], None]

# Seconds each layer may take before it is abandoned (scaled by --timeout-scale). CUDA's first init and
# cuBLAS handle creation can take tens of seconds on a cold node; a hub download of GPT-2 longer.
# Layers that time things: the background imports must be finished before they start (gpt2 waits itself,
# after its hub check, so an unreachable hub is reported without waiting for the imports).
PREFETCH_BEFORE = ("gpu_perf",)
# Layers that use torch: the background imports start when one of them is requested.
TORCH_LAYERS = ("torch_cuda", "gpu_perf", "gpt2")
LAYER_TIMEOUT_S = {"driver": 30.0, "nvidia_smi": 45.0, "torch_cuda": 180.0, "gpu_perf": 120.0, "gpt2": 300.0}


def read_env() -> dict[str, str | None]:
    """The allow-listed NVIDIA/CUDA variables (None when unset)."""
    return {name: os.environ.get(name) for name in ENV_ALLOWLIST}


def identity(in_kubernetes: bool) -> dict[str, Any]:
    """Who measured: host, pod (downward API env POD_NAME/POD_NAMESPACE/NODE_NAME), python, platform, uid."""
    hostname = socket.gethostname()
    namespace = os.environ.get("POD_NAMESPACE")
    if in_kubernetes and namespace is None:
        try:
            with open(SA_NAMESPACE_FILE, encoding="utf-8") as handle:
                namespace = handle.read().strip() or None
        except OSError:
            namespace = None
    return {
        "hostname": hostname,
        "pod_name": os.environ.get("POD_NAME") or (hostname if in_kubernetes else None),
        "pod_namespace": namespace,
        "node_name": os.environ.get("NODE_NAME"),
        "in_kubernetes": in_kubernetes,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "user_uid": os.getuid() if hasattr(os, "getuid") else None,
        "user": _user_name(),
    }


def _user_name() -> str | None:
    """The login name, or None in containers whose uid has no passwd entry."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def run_layer(name: str, func: LayerFunc, ctx: Context, timeout_s: float) -> LayerResult:
    """Run one layer in a daemon thread; exceptions and timeouts become the layer's error."""
    result = LayerResult()
    done = threading.Event()

    def target() -> None:
        try:
            func(ctx, result)
        except Exception as exc:  # a layer must never crash the probe
            result.set("error", f"the probe's {name} layer raised {type(exc).__name__}: {exc}")
            result.evidence["traceback"] = traceback.format_exc(limit=8)
        finally:
            done.set()

    start = time.perf_counter()
    thread = threading.Thread(target=target, name=f"layer-{name}", daemon=True)
    thread.start()
    finished = done.wait(timeout_s)
    result.duration_s = time.perf_counter() - start
    if not finished:
        snapshot = LayerResult(
            status="error",
            duration_s=result.duration_s,
            metrics=dict(result.metrics),
            evidence=dict(result.evidence),
            error=f"the {name} layer did not finish within {timeout_s:.0f} s and was abandoned",
            diagnosis=result.diagnosis,
        )
        return snapshot
    return result


class Prefetch:
    """Import the heavy libraries (torch, transformers) in a background thread while the cheap layers run.

    transformers 5 takes ~9 s to import on a GPU host with a large Python environment; overlapping it with
    driver/nvidia_smi/torch_cuda keeps the whole warm run short. Timed layers (gpu_perf, gpt2) wait for it
    first, so no import competes for the GIL while they measure. Failures are left for the layer to report.
    `value` is what the function returned (the gpt2 prefetch: the integrations it left out).
    """

    def __init__(self, func: Callable[[], Any]) -> None:
        self.wall_s: float | None = None
        self.error: str | None = None
        self.value: Any = None
        self._func = func
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._start = time.perf_counter()
        self._thread.start()

    def _run(self) -> None:
        try:
            self.value = self._func()
        except BaseException as exc:  # the layer imports again and reports the cause itself
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.wall_s = time.perf_counter() - self._start

    def wait(self, timeout_s: float) -> float:
        """Block until the imports are done (at most timeout_s); return the seconds waited."""
        start = time.perf_counter()
        self._thread.join(timeout_s)
        return time.perf_counter() - start


def skipped(reason: str) -> LayerResult:
    """A layer that was not measured, with the reason in its error field."""
    return LayerResult(status="skipped", error=reason)


def run_probe(
    options: Options,
    layer_funcs: dict[str, LayerFunc],
    argv: list[str],
    prefetch: Callable[[], Any] | None = None,
    early: Callable[[Context], None] | None = None,
) -> dict[str, Any]:
    """Measure the requested layers in document order and return the complete document.

    `early(ctx)` runs first (the gpt2 layer's hub check starts there); `prefetch` runs in a background thread
    from the start when a layer that uses torch was requested.
    """
    started = datetime.now(timezone.utc)
    start = time.perf_counter()
    in_kubernetes = "KUBERNETES_SERVICE_HOST" in os.environ
    ctx = Context(options=options, env=read_env(), in_kubernetes=in_kubernetes)
    if early is not None:
        early(ctx)
    wants_torch = any(name in options.layers for name in TORCH_LAYERS)
    ctx.prefetch = Prefetch(prefetch) if prefetch is not None and wants_torch else None
    for name in LAYER_NAMES:
        if name not in options.layers:
            ctx.results[name] = skipped("not requested (--layers)")
            continue
        if name in PREFETCH_BEFORE and ctx.prefetch is not None and ctx.prefetch.wall_s is None:
            print("gpu-probe: waiting for the background imports (torch, transformers) ...", file=sys.stderr)
            ctx.prefetch_waited_s += ctx.prefetch.wait(LAYER_TIMEOUT_S["gpt2"] * options.timeout_scale)
        print(f"gpu-probe: measuring {name} ...", file=sys.stderr, flush=True)
        timeout = LAYER_TIMEOUT_S[name] * options.timeout_scale
        ctx.results[name] = run_layer(name, layer_funcs[name], ctx, timeout)
        result = ctx.results[name]
        print(f"gpu-probe: {name}: {result.status} in {result.duration_s:.2f} s", file=sys.stderr, flush=True)
    passed = all(ctx.results[name].status == "pass" for name in options.layers)
    return {
        "schema_version": SCHEMA_VERSION,
        "probe": {"name": PROBE_NAME, "version": __version__, "argv": list(argv)},
        "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": round(time.perf_counter() - start, 3),
        "identity": identity(in_kubernetes),
        "env": ctx.env,
        "exit_code": EXIT_OK if passed else EXIT_LAYER_FAILED,
        "layers": {name: ctx.results[name].as_dict() for name in LAYER_NAMES},
    }
