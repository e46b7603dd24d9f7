"""Ask libcuda.so.1 (via ctypes, stdlib only) which CUDA version the installed driver supports."""

from __future__ import annotations

import ctypes

from gpu_probe.parsers import cuda_version_string


def cuda_driver_version() -> tuple[str | None, str | None]:
    """('13.0', None) from cuDriverGetVersion, or (None, why it could not be read)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return None, f"libcuda.so.1 cannot be loaded: {exc}"
    version = ctypes.c_int(0)
    code = lib.cuDriverGetVersion(ctypes.byref(version))
    if code != 0:
        return None, f"cuDriverGetVersion returned CUDA error {code}"
    return cuda_version_string(version.value), None
