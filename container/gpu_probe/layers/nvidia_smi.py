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


def nvidia_smi_candidates() -> list[str]:
    """Executable nvidia-smi files: the one on PATH first, then the places runtimes mount it."""
    found = [p for p in (shutil.which("nvidia-smi"), *FALLBACK_PATHS) if p]
    runnable = [p for p in found if os.path.isfile(p) and os.access(p, os.X_OK)]
    return list(dict.fromkeys(os.path.abspath(p) for p in runnable))


def program_interpreter(path: str) -> str | None:
    """The interpreter the kernel needs to start a file: its `#!` line, or an ELF's PT_INTERP loader."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            if head.startswith(b"#!"):
                return head[2:].split(b"\n", 1)[0].strip().split()[0].decode(errors="replace")
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
                return None
            phoff = int.from_bytes(head[32:40], "little")
            phentsize = int.from_bytes(head[54:56], "little")
            phnum = int.from_bytes(head[56:58], "little")
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                entry = table[i * phentsize : (i + 1) * phentsize]
                if int.from_bytes(entry[0:4], "little") == 3:  # PT_INTERP
                    offset = int.from_bytes(entry[8:16], "little")
                    size = int.from_bytes(entry[32:40], "little")
                    f.seek(offset)
                    return f.read(size).rstrip(b"\0").decode(errors="replace")
    except (OSError, IndexError, ValueError):
        return None
    return None


def cannot_execute(path: str, exc: OSError) -> str:
    """Why an existing nvidia-smi did not start: ENOENT on a file that exists is its missing interpreter."""
    interpreter = program_interpreter(path)
    if interpreter and not os.path.exists(interpreter):
        return f"{path} cannot start: its interpreter {interpreter} is not in this container ({exc.strerror})"
    return f"{path} cannot start: {exc.strerror or exc}"


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
    candidates = nvidia_smi_candidates()
    path = candidates[0] if candidates else None
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
    unstartable: list[str] = []
    for candidate in candidates:  # the first that starts; a mount of the wrong build may not
        try:
            table_code, table, table_err = _run([candidate])
        except OSError as exc:
            unstartable.append(cannot_execute(candidate, exc))
            continue
        path = candidate
        break
    else:
        result.metrics["unstartable"] = unstartable
        result.set(
            "fail",
            "nvidia-smi is in the container but cannot start: " + "; ".join(unstartable),
            {
                "cause": "the nvidia-smi the runtime mounted needs a program loader or interpreter this "
                "image lacks (a driver built for another root, e.g. a Nix-built driver whose binaries name "
                "a /nix/store loader, or a wrapper script)",
                "fix": "make the runtime mount the driver's runnable nvidia-smi (CDI: generate the spec with "
                "the driver's own bin folder first on PATH), or use an image that has that loader",
            },
        )
        return
    result.metrics["path"] = path
    if unstartable:
        result.evidence["unstartable"] = unstartable
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
    if "error while loading shared libraries" in first_line:
        library = first_line.split("error while loading shared libraries:", 1)[1].split(":", 1)[0].strip()
        return {
            "cause": f"nvidia-smi, mounted from the node's driver, needs {library}, which this image lacks: "
            "the runtime injects the driver's files, not the system libraries they link",
            "fix": f"use an image that has {library} (a full glibc, as every CUDA base image has), or add it",
        }
    if "Driver/library version mismatch" in first_line:
        return {
            "cause": "the user-space driver libraries do not match the loaded kernel module",
            "fix": "reboot the node (or reload the nvidia modules) after the driver upgrade",
        }
    return None
