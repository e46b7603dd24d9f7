"""Import torch and transformers' GPT-2 model class, and none of transformers' optional integrations.

Why: on an H100 host with a large Python environment, importing `GPT2LMHeadModel` the ordinary way took
14-18 s, most of it optional integrations that transformers imports at module level only because their
packages are installed: scikit-learn (assisted generation), scipy and PIL (object-detection losses),
accelerate (device maps) and torch.distributed's DTensor (tensor parallelism). The gpt2 layer uses none of
them: it builds or loads one GPT-2 on one device and decodes greedily. Before the model module is imported,
transformers' own availability checks for those integrations are made to answer False, so transformers skips
them exactly as on a host where they are not installed; the GPT-2 code that runs is unchanged.

torch._dynamo, the compiler front end (with sympy: 4.3 s of the ~10 s import on the H100), is imported by
transformers' modules only to decorate functions for torch.compile (torch.compiler.disable, allow_in_graph)
and for one mask helper; the probe never compiles. While the GPT-2 module is imported, a stand-in for
torch._dynamo (DynamoStandIn) answers those decorators without the compiler: `disable` returns a wrapper that
calls the function as eager mode does (and applies the real decorator if the real torch._dynamo is loaded by
then), `allow_in_graph` returns the function (what the real one returns); any other use imports the real
torch._dynamo at once. The stand-in is removed right after the import, so later users get the real module.

transformers' first import also maps every installed distribution to its packages
(importlib.metadata.packages_distributions: 0.6 s of file parsing under the GIL with ~200 packages). The
same call runs in a child process from the start (`DistributionMap`), in parallel with `import torch`, and
its answer is handed to transformers; if the child fails, transformers computes it itself as usual.

GPU_PROBE_PLAIN_IMPORTS=1 turns all of this off (the ordinary import, for comparison and as an escape hatch).
This module imports nothing heavy at import time (the probe's stdlib-only layers import it).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from typing import Any

# transformers.utils.import_utils checks that gate an optional integration the gpt2 layer never uses.
UNUSED_INTEGRATIONS = (
    "is_sklearn_available",
    "is_scipy_available",
    "is_accelerate_available",
    "is_vision_available",
    "is_torchvision_available",
    "is_torch_distributed_available",
    "is_kernels_available",
)
MODEL_MODULE = "transformers.models.gpt2.modeling_gpt2"
PLAIN_ENV = "GPU_PROBE_PLAIN_IMPORTS"


def plain_imports(environ: Any = os.environ) -> bool:
    """True when GPU_PROBE_PLAIN_IMPORTS asks for the ordinary import."""
    return str(environ.get(PLAIN_ENV, "")).strip().lower() in ("1", "true", "yes", "on")


def _unavailable(*_args: Any, **_kwargs: Any) -> bool:
    """transformers' answer on a host without the package."""
    return False


def hide_unused_integrations() -> list[str]:
    """Make transformers treat UNUSED_INTEGRATIONS as absent; return the checks changed.

    Must run before any transformers module that imports them is imported (a module binds the check when it
    is imported); importing transformers.utils first is cheap (no model code, no torch submodules).
    """
    import transformers.utils as utils_pkg
    from transformers.utils import import_utils

    changed = []
    for name in UNUSED_INTEGRATIONS:
        if hasattr(import_utils, name):
            setattr(import_utils, name, _unavailable)
            if hasattr(utils_pkg, name):
                setattr(utils_pkg, name, _unavailable)
            changed.append(name)
    return changed


DYNAMO = "torch._dynamo"
DYNAMO_HOP = "torch._dynamo._trace_wrapped_higher_order_op"
# What was asked of the stand-ins (name -> count), and which use made them import the real module.
STANDIN_LOG: dict[str, int] = {}
REAL_DYNAMO_BECAUSE: list[str] = []


def _real_dynamo(reason: str) -> types.ModuleType:
    """Drop the stand-ins and import the real torch._dynamo (recording why)."""
    REAL_DYNAMO_BECAUSE.append(reason)
    for name in (DYNAMO_HOP, DYNAMO):
        if isinstance(sys.modules.get(name), DynamoStandIn):
            del sys.modules[name]
    return importlib.import_module(DYNAMO)


def _deferred_disable(fn: Any, recursive: bool = True, reason: str | None = None) -> Any:
    """torch._dynamo.disable without the compiler: eager calls go straight to fn, as under the real one."""
    applied: list[Any] = []

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        real = sys.modules.get(DYNAMO)
        if real is None or isinstance(real, DynamoStandIn):
            return fn(*args, **kwargs)
        if not applied:  # the real dynamo is loaded now (someone compiles): behave exactly as it would
            applied.append(real.disable(fn, recursive, reason=reason))
        return applied[0](*args, **kwargs)

    return call


class DynamoStandIn(types.ModuleType):
    """Stands in for torch._dynamo (and its _trace_wrapped_higher_order_op) while transformers is imported."""

    def __init__(self, name: str) -> None:
        super().__init__(name, "gpu_probe.lean_import stand-in: the real module comes at first real use")

    def _note(self, what: str) -> None:
        STANDIN_LOG[what] = STANDIN_LOG.get(what, 0) + 1

    def disable(self, fn: Any = None, recursive: bool = True, *, reason: str | None = None) -> Any:
        self._note("disable")
        if fn is None:
            return lambda f: _deferred_disable(f, recursive, reason)
        return _deferred_disable(fn, recursive, reason)

    def allow_in_graph(self, fn: Any) -> Any:
        self._note("allow_in_graph")
        return fn  # the real one registers fn for the compiler and returns it unchanged

    def assume_constant_result(self, fn: Any) -> Any:
        self._note("assume_constant_result")
        fn._dynamo_marked_constant = True  # what the real one does, and all it does
        return fn

    def TransformGetItemToIndex(self, *args: Any, **kwargs: Any) -> Any:
        """The mask helper's context manager: the real one, imported when a mask is really built with vmap."""
        _real_dynamo("TransformGetItemToIndex (a mask built with vmap)")
        return importlib.import_module(DYNAMO_HOP).TransformGetItemToIndex(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        real = _real_dynamo(f"{self.__name__}.{attr}")
        module = real if self.__name__ == DYNAMO else importlib.import_module(self.__name__)
        return getattr(module, attr)


@contextlib.contextmanager
def dynamo_stand_in() -> Iterator[bool]:
    """While inside: torch._dynamo is a DynamoStandIn (unless the real one is already imported)."""
    if DYNAMO in sys.modules:
        yield False
        return
    sys.modules[DYNAMO] = DynamoStandIn(DYNAMO)
    sys.modules[DYNAMO_HOP] = DynamoStandIn(DYNAMO_HOP)
    try:
        yield True
    finally:
        for name in (DYNAMO_HOP, DYNAMO):
            if isinstance(sys.modules.get(name), DynamoStandIn):
                del sys.modules[name]


# The child searches the parent's sys.path (given as argv[1]), so both see the same distributions even where
# the parent's path was extended after start (pytest's rootdir, PYTHONPATH set by a wrapper, a checkout's
# *.egg-info beside the sources).
DISTRIBUTION_MAP_CODE = (
    "import importlib.metadata, json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "json.dump(importlib.metadata.packages_distributions(), sys.stdout)"
)


class DistributionMap:
    """importlib.metadata.packages_distributions() computed by a child process, started at construction."""

    def __init__(self) -> None:
        self.error: str | None = None
        try:
            self._child: subprocess.Popen[str] | None = subprocess.Popen(
                [sys.executable, "-c", DISTRIBUTION_MAP_CODE, json.dumps(sys.path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError as exc:
            self._child, self.error = None, f"{type(exc).__name__}: {exc}"

    def result(self, timeout_s: float = 20.0) -> dict[str, list[str]] | None:
        """The mapping, or None (with `error` set) when the child failed or took too long."""
        if self._child is None:
            return None
        try:
            out, _ = self._child.communicate(timeout=timeout_s)
            mapping = json.loads(out) if self._child.returncode == 0 else None
        except (subprocess.TimeoutExpired, ValueError) as exc:
            self._child.kill()
            self.error = f"{type(exc).__name__}: {exc}"
            return None
        if not isinstance(mapping, dict):
            self.error = f"the child exited {self._child.returncode}"
            return None
        return mapping


@contextlib.contextmanager
def given_distribution_map(mapping: dict[str, list[str]] | None) -> Iterator[None]:
    """While inside, importlib.metadata.packages_distributions() answers `mapping` (when there is one)."""
    original = importlib.metadata.packages_distributions
    if mapping is not None:
        importlib.metadata.packages_distributions = lambda: {k: list(v) for k, v in mapping.items()}
    try:
        yield
    finally:
        importlib.metadata.packages_distributions = original


def import_gpt2_class(environ: Any = os.environ) -> list[str]:
    """torch, then GPT2LMHeadModel by its module path; returns what was left out (for the document)."""
    plain = plain_imports(environ)
    first = "transformers.utils.import_utils" not in sys.modules
    distributions = DistributionMap() if first and not plain else None
    import torch  # noqa: F401 - first, on its own: the torch_cuda layer waits only for this

    if plain:
        importlib.import_module("transformers").GPT2LMHeadModel  # noqa: B018 - the ordinary, lazy path
        return []
    with given_distribution_map(distributions.result() if distributions else None):
        left_out = [name[len("is_") : -len("_available")] for name in hide_unused_integrations()]
    with dynamo_stand_in() as standing_in:
        importlib.import_module(MODEL_MODULE)
    if standing_in and not REAL_DYNAMO_BECAUSE:
        left_out.append("torch._dynamo")
    return left_out
