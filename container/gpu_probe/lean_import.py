"""Import torch and transformers' GPT-2 model class, and none of transformers' optional integrations.

Why: on an H100 host with a large Python environment, importing `GPT2LMHeadModel` the ordinary way took
14-18 s, most of it optional integrations that transformers imports at module level only because their
packages are installed: scikit-learn (assisted generation), scipy and PIL (object-detection losses),
accelerate (device maps) and torch.distributed's DTensor (tensor parallelism). The gpt2 layer uses none of
them: it builds or loads one GPT-2 on one device and decodes greedily. Before the model module is imported,
transformers' own availability checks for those integrations are made to answer False, so transformers skips
them exactly as on a host where they are not installed; the GPT-2 code that runs is unchanged.

What stays is what GPT-2's module really imports: torch, torch._dynamo with sympy (transformers decorates
model code with torch.compiler.disable / allow_in_graph at class definition), and transformers' core.

GPU_PROBE_PLAIN_IMPORTS=1 turns all of this off (the ordinary import, for comparison and as an escape hatch).
This module imports nothing heavy at import time (the probe's stdlib-only layers import it).
"""

from __future__ import annotations

import importlib
import os
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


def import_gpt2_class(environ: Any = os.environ) -> list[str]:
    """torch, then GPT2LMHeadModel by its module path; returns what was left out (for the document)."""
    import torch  # noqa: F401 - first, on its own: the torch_cuda layer waits only for this

    if plain_imports(environ):
        importlib.import_module("transformers").GPT2LMHeadModel  # noqa: B018 - the ordinary, lazy path
        return []
    left_out = [name[len("is_") : -len("_available")] for name in hide_unused_integrations()]
    importlib.import_module(MODEL_MODULE)
    return left_out
