"""nvidia_smi: run the tool (with a timeout), keep its raw table and CSV query as evidence, parse both."""

from __future__ import annotations

import os
import shutil
import subprocess

from gpu_probe.core import Context, LayerResult
from gpu_probe.diagnosis import diagnose_nvidia_smi_missing
from gpu_probe.parsers import SMI_QUERY_ARG, parse_smi_query_csv, parse_smi_table

# Where the NVIDIA container runtime / driver packages put nvidia-smi when PATH lacks it.
FALLBACK_PATHS = ("/usr/bin/nvidia-smi", "/usr/local/nvidia/bin/nvidia-smi", "/usr/local/bin/nvidia-smi")
TIMEOUT_S = 20.0


def find_nvidia_smi() -> str | None:
    """nvidia-smi on PATH, else in the places the runtime mounts it."""
    found = shutil.which("nvidia-smi")
    if found:
        return found
    return next((p for p in FALLBACK_PATHS if os.path.isfile(p) and os.access(p, os.X_OK)), None)


def _run(args: list[str]) -> tuple[int | None, str, str]:
    """(exit code or None on timeout, stdout, stderr) of one nvidia-smi call."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return None, out, f"timed out after {TIMEOUT_S:.0f} s"
    return proc.returncode, proc.stdout, proc.stderr


def measure(ctx: Context, result: LayerResult) -> None:
    """Pass when nvidia-smi exits 0 and its CSV query lists at least one GPU."""
    path = find_nvidia_smi()
    result.metrics.update({"exit_code": None, "path": path, "gpu_count": 0, "gpus": []})
    if path is None:
        caps = ctx.env.get("NVIDIA_DRIVER_CAPABILITIES")
        expected = ctx.in_kubernetes or any(
            ctx.env.get(k) is not None for k in ("NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES")
        )
        driver = ctx.results.get("driver")
        driver_present = driver is not None and driver.metrics.get("driver_version") is not None
        if driver is None or driver.status == "skipped":  # not measured: judge from the kernel alone
            driver_present = os.path.exists("/proc/driver/nvidia/version")
        result.set(
            "fail",
            "nvidia-smi not found on PATH nor in " + ", ".join(FALLBACK_PATHS),
            diagnose_nvidia_smi_missing(caps, expected, driver_present),
        )
        return
    table_code, table, table_err = _run([path])
    csv_code, csv_text, csv_err = _run([path, SMI_QUERY_ARG, "--format=csv"])
    result.evidence.update({"table": table, "csv": csv_text, "query": SMI_QUERY_ARG + " --format=csv"})
    if table_err.strip() or csv_err.strip():
        result.evidence["stderr"] = (table_err + csv_err).strip()
    gpus = parse_smi_query_csv(csv_text) if csv_code == 0 else []
    parsed_table = parse_smi_table(table)
    result.metrics.update(
        {
            "exit_code": csv_code if table_code == 0 else table_code,
            "gpu_count": len(gpus),
            "gpus": gpus,
            "driver_version": parsed_table["driver_version"],
            "cuda_version": parsed_table["cuda_version"],
            "table_gpu_count": len(parsed_table["gpus"]),
            "processes": parsed_table["processes"],
        }
    )
    if table_code == 0 and csv_code == 0 and gpus:
        result.set("pass")
        return
    message = (table_err or csv_err or table or csv_text).strip().splitlines()
    first = message[0] if message else "no output"
    result.set(
        "fail",
        f"nvidia-smi exited {table_code} (table) / {csv_code} (query) with {len(gpus)} GPU(s): {first}",
        _smi_failure_diagnosis(first),
    )


def _smi_failure_diagnosis(first_line: str) -> dict[str, str] | None:
    """nvidia-smi's own well-known failure messages."""
    if "couldn't communicate with the NVIDIA driver" in first_line:
        return {
            "cause": "nvidia-smi is present but cannot reach the kernel driver (not loaded, or the device "
            "nodes were not injected into this container)",
            "fix": "on a host: load the driver (modprobe nvidia) / reboot after a driver upgrade; in a pod: "
            "set runtimeClassName: nvidia and request nvidia.com/gpu",
        }
    if "Driver/library version mismatch" in first_line:
        return {
            "cause": "the user-space driver libraries do not match the loaded kernel module",
            "fix": "reboot the node (or reload the nvidia modules) after the driver upgrade",
        }
    return None
