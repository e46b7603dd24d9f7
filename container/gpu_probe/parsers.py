"""Pure parsers for what the driver and its tools print; unit-tested on real captures from an H100.

Nothing here touches the system: the layers read the files and run the tools, these functions turn the text
(or NVML's raw values) into the document's metrics, tolerating garbage by returning None/empty values.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

# nvidia-smi --query-gpu fields, in order, and the document key each becomes.
SMI_QUERY_FIELDS = (
    ("index", "index"),
    ("name", "name"),
    ("uuid", "uuid"),
    ("driver_version", "driver_version"),
    ("memory.total", "memory_total_mib"),
    ("memory.used", "memory_used_mib"),
    ("utilization.gpu", "utilization_gpu_pct"),
    ("temperature.gpu", "temperature_c"),
    ("power.draw", "power_draw_w"),
    ("pstate", "pstate"),
    ("persistence_mode", "persistence_mode"),
    ("mig.mode.current", "mig_mode"),
    ("compute_mode", "compute_mode"),
    ("pci.bus_id", "pci_bus_id"),
)
SMI_QUERY_ARG = "--query-gpu=" + ",".join(field for field, _ in SMI_QUERY_FIELDS)
_SMI_INT_KEYS = {"index", "memory_total_mib", "memory_used_mib", "utilization_gpu_pct", "temperature_c"}
_SMI_FLOAT_KEYS = {"power_draw_w"}
_NOT_AVAILABLE = {
    "",
    "[n/a]",
    "n/a",
    "[not supported]",
    "not supported",
    "[unknown error]",
    "[insufficient permissions]",
}
_UNIT_SUFFIX = re.compile(r"\s*(mib|%|w|c|mhz)$", re.IGNORECASE)
_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)*")

COMPUTE_MODES = {0: "Default", 1: "Exclusive_Thread", 2: "Prohibited", 3: "Exclusive_Process"}


def smi_value(raw: str | None) -> str | None:
    """One CSV cell without padding; None for nvidia-smi's '[N/A]'/'[Not Supported]' markers."""
    if raw is None:
        return None
    value = raw.strip()
    return None if value.lower() in _NOT_AVAILABLE else value


def _number(raw: str | None, kind: type) -> int | float | None:
    """A numeric cell with its unit (' MiB', ' %', ' W') stripped; None when it is not a number."""
    value = smi_value(raw)
    if value is None:
        return None
    value = _UNIT_SUFFIX.sub("", value)
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if kind is int and number.is_integer() else (number if kind is float else None)


def parse_smi_query_csv(text: str) -> list[dict[str, Any]]:
    """Rows of `nvidia-smi --query-gpu=... --format=csv` as dicts keyed by the document's names.

    The header line names the fields (so the column order and units are read, not assumed); rows with the
    wrong number of cells (truncated output) are dropped. Unknown header fields keep their header name.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    reader = csv.reader(io.StringIO("\n".join(lines)), skipinitialspace=True)
    rows = list(reader)
    header = [_header_key(cell) for cell in rows[0]]
    known = dict(SMI_QUERY_FIELDS)
    if not any(key in known.values() for key in header):
        return []
    gpus = []
    for cells in rows[1:]:
        if len(cells) != len(header):
            continue
        gpu: dict[str, Any] = {}
        for key, cell in zip(header, cells):  # noqa: B905 - lengths checked above; py3.8 has no strict=
            if key in _SMI_INT_KEYS:
                gpu[key] = _number(cell, int)
            elif key in _SMI_FLOAT_KEYS:
                gpu[key] = _number(cell, float)
            else:
                gpu[key] = smi_value(cell)
        gpus.append(gpu)
    return gpus


def _header_key(cell: str) -> str:
    """'memory.total [MiB]' -> 'memory_total_mib' via the field table; unknown fields keep a clean name."""
    field = cell.strip().split(" [")[0].strip()
    return dict(SMI_QUERY_FIELDS).get(field, field.replace(".", "_"))


_SMI_HEADER = re.compile(
    r"NVIDIA-SMI\s+(?P<smi>\S+)\s+Driver Version:\s*(?P<driver>\S+)(?:\s+CUDA Version:\s*(?P<cuda>[\d.]+))?"
)
_SMI_GPU_LINE1 = re.compile(r"^\s*(?P<index>\d+)\s+(?P<name>.+?)\s+(?P<persistence>On|Off)\s*$")
_SMI_USAGE = re.compile(r"(?P<used>\d+)\s*MiB\s*/\s*(?P<total>\d+)\s*MiB")
_SMI_TEMP = re.compile(r"(?P<temp>\d+)C\b")
_SMI_PERF = re.compile(r"\b(?P<pstate>P\d+)\b")
_SMI_POWER = re.compile(r"(?P<draw>[\d.]+|N/A)\s*W?\s*/\s*(?P<cap>[\d.]+|N/A)\s*W?")
_SMI_UTIL = re.compile(r"(?P<util>\d+)%\s+(?P<compute>\S+)")
_SMI_PROCESS = re.compile(
    r"^\s*(?P<gpu>\d+)\s+(?P<gi>\S+)\s+(?P<ci>\S+)\s+(?P<pid>\d+)\s+(?P<type>\S+)\s+(?P<name>.+?)\s+"
    r"(?P<mem>\d+)\s*MiB\s*$"
)


def parse_smi_table(text: str) -> dict[str, Any]:
    """The plain `nvidia-smi` table: versions, one entry per GPU, and the process list.

    Cells are found by splitting on '|' and matching each cell on its own, so column widths (which change
    between driver releases) do not matter. Returns empty values where the table is truncated or garbled.
    """
    result: dict[str, Any] = {
        "smi_version": None,
        "driver_version": None,
        "cuda_version": None,
        "gpus": [],
        "processes": [],
        "no_running_processes": "No running processes found" in text,
    }
    header = _SMI_HEADER.search(text)
    if header:
        result["smi_version"] = header.group("smi")
        result["driver_version"] = header.group("driver")
        result["cuda_version"] = header.group("cuda")
    in_processes = False
    current: dict[str, Any] | None = None
    line_in_block = 0
    for line in text.splitlines():
        if "Processes:" in line:
            in_processes = True
            current = None
            continue
        cells = [cell for cell in line.strip().strip("|").split("|")] if line.strip().startswith("|") else []
        if in_processes:
            match = _SMI_PROCESS.match(cells[0]) if len(cells) == 1 else None
            if match:
                result["processes"].append(
                    {
                        "gpu": int(match.group("gpu")),
                        "pid": int(match.group("pid")),
                        "type": match.group("type"),
                        "name": match.group("name"),
                        "memory_used_mib": int(match.group("mem")),
                    }
                )
            continue
        if not cells or len(cells) < 3:
            current = None if line.strip().startswith("+") else current
            continue
        first = _SMI_GPU_LINE1.match(cells[0])
        if first:
            current = {
                "index": int(first.group("index")),
                "name": first.group("name").strip(),
                "persistence_mode": "Enabled" if first.group("persistence") == "On" else "Disabled",
                "pci_bus_id": cells[1].split()[0] if cells[1].split() else None,
                "ecc_uncorrected": smi_value(cells[2]),
            }
            result["gpus"].append(current)
            line_in_block = 1
            continue
        if current is None:
            continue
        line_in_block += 1
        if line_in_block == 2:
            _parse_smi_second_line(current, cells)
        elif line_in_block == 3:
            current["mig_mode"] = smi_value(cells[2])
    return result


def _parse_smi_second_line(gpu: dict[str, Any], cells: list[str]) -> None:
    """Fan/Temp/Perf/Power | Memory-Usage | GPU-Util/Compute M. of one GPU block."""
    left, memory, util = cells[0], cells[1], cells[2]
    temp = _SMI_TEMP.search(left)
    perf = _SMI_PERF.search(left)
    power = _SMI_POWER.search(left)
    usage = _SMI_USAGE.search(memory)
    utilization = _SMI_UTIL.search(util)
    gpu["temperature_c"] = int(temp.group("temp")) if temp else None
    gpu["pstate"] = perf.group("pstate") if perf else None
    gpu["power_draw_w"] = _number(power.group("draw"), float) if power else None
    gpu["power_cap_w"] = _number(power.group("cap"), float) if power else None
    gpu["memory_used_mib"] = int(usage.group("used")) if usage else None
    gpu["memory_total_mib"] = int(usage.group("total")) if usage else None
    gpu["utilization_gpu_pct"] = int(utilization.group("util")) if utilization else None
    gpu["compute_mode"] = utilization.group("compute") if utilization else None


_PROC_NVRM = re.compile(
    r"NVRM version:\s*(?P<flavour>.*?Kernel Module)?\s*(?:for\s+(?P<arch>\S+))?"
    r"\s+(?P<version>\d+\.\d+(?:\.\d+)?)"
)
_PROC_GCC = re.compile(r"GCC version:\s*(?P<gcc>.+)")


def parse_proc_driver_version(text: str) -> dict[str, Any]:
    """/proc/driver/nvidia/version: driver version, kernel module flavour (open or proprietary), gcc."""
    result: dict[str, Any] = {"driver_version": None, "kernel_module": None, "arch": None, "gcc": None}
    nvrm = _PROC_NVRM.search(text)
    if nvrm:
        result["driver_version"] = nvrm.group("version")
        flavour = (nvrm.group("flavour") or "").strip()
        result["kernel_module"] = flavour or None
        result["arch"] = nvrm.group("arch")
    gcc = _PROC_GCC.search(text)
    if gcc:
        result["gcc"] = gcc.group("gcc").strip()
    return result


def parse_proc_gpu_information(text: str) -> dict[str, Any]:
    """/proc/driver/nvidia/gpus/<bus>/information ('Model:  NVIDIA H100 ...' lines) as a dict."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            fields[key.strip()] = value.strip()
    return {
        "name": fields.get("Model"),
        "uuid": fields.get("GPU UUID"),
        "pci_bus_id": fields.get("Bus Location"),
        "device_minor": _to_int(fields.get("Device Minor")),
    }


def _to_int(value: str | None) -> int | None:
    """int(value) or None, for fields that may be absent or '?'."""
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# --- NVML value normalisation (raw values from pynvml -> document values) -------------------------------


def nvml_text(value: Any) -> str | None:
    """Old pynvml returns bytes, new returns str; both become str."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def cuda_version_string(value: Any) -> str | None:
    """CUDA's integer version (13000, 12040) as 'major.minor' ('13.0', '12.4'); None if not an int."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


def version_tuple(value: str | None) -> tuple[int, ...] | None:
    """'12.4' -> (12, 4); None when no version number is found."""
    if not value:
        return None
    match = _VERSION.search(value)
    if not match:
        return None
    return tuple(int(part) for part in match.group(0).split("."))


def bytes_to_mib(value: Any) -> int | None:
    """NVML reports memory in bytes; the document in MiB."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value // (1024 * 1024)


def enabled_flag(value: Any) -> str | None:
    """NVML's 0/1 feature states as 'Disabled'/'Enabled' (None when not supported)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return "Enabled" if value else "Disabled"


def current_mode(value: Any) -> str | None:
    """NVML (current, pending) pairs (MIG, ECC) as the current mode's 'Enabled'/'Disabled'."""
    if isinstance(value, (list, tuple)) and value:
        return enabled_flag(value[0])
    return enabled_flag(value)


def compute_mode_name(value: Any) -> str | None:
    """NVML compute mode number as nvidia-smi names it."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return COMPUTE_MODES.get(value, f"Unknown({value})")


def normalise_nvml_gpu(raw: dict[str, Any]) -> dict[str, Any]:
    """One GPU's raw NVML values (as the driver layer records them in evidence) -> the document's gpus[i].

    Raw values that NVML refused (not supported, no permission) are recorded as None and stay None.
    """
    retired = raw.get("retired_pages")
    remapped = raw.get("remapped_rows")
    return {
        "index": raw.get("index"),
        "name": nvml_text(raw.get("name")),
        "uuid": nvml_text(raw.get("uuid")),
        "memory_total_mib": bytes_to_mib(raw.get("memory_total_bytes")),
        "memory_used_mib": bytes_to_mib(raw.get("memory_used_bytes")),
        "persistence_mode": enabled_flag(raw.get("persistence_mode")),
        "mig_mode": current_mode(raw.get("mig_mode")),
        "compute_mode": compute_mode_name(raw.get("compute_mode")),
        "ecc_mode": current_mode(raw.get("ecc_mode")),
        "retired_pages": _retired_pages(retired),
        "remapped_rows": _remapped_rows(remapped),
        "pci_bus_id": nvml_text(raw.get("pci_bus_id")),
    }


def _retired_pages(value: Any) -> dict[str, int] | None:
    """{'single_bit_ecc': n, 'double_bit_ecc': n} from lists of retired page addresses per cause."""
    if not isinstance(value, dict):
        return None
    counts = {}
    for cause in ("single_bit_ecc", "double_bit_ecc"):
        pages = value.get(cause)
        if isinstance(pages, list):
            counts[cause] = len(pages)
    return counts or None


def _remapped_rows(value: Any) -> dict[str, Any] | None:
    """NVML row remapping (Ampere+ replaces page retirement): (corrected, uncorrected, pending, failed)."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    corrected, uncorrected, pending, failed = value
    return {
        "corrected": corrected,
        "uncorrected": uncorrected,
        "pending": bool(pending),
        "failed": bool(failed),
    }
