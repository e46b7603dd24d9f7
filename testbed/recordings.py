"""Which recording a simulated probe pod prints, and the file kwok serves it from. SIMULATED pod logs.

kwok serves a container log from a file in the CRI log format (what kubelet reads from /var/log/pods):
one `<RFC3339Nano time> stdout F <line>\\n` per line, `P` for a last line without a newline. Writing the
recording in that format is what makes `kubectl logs` return the recording byte for byte.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from testbed.stages import RECORDING_ANNOTATION

GPU_RESOURCE = "nvidia.com/gpu"
REPO_ROOT = Path(__file__).resolve().parent.parent


def recordings_dir() -> Path:
    """The directory holding `<name>.log` recordings (override: TESTBED_RECORDINGS_DIR)."""
    override = os.environ.get("TESTBED_RECORDINGS_DIR")
    return Path(override) if override else REPO_ROOT / "tests" / "data" / "recordings"


def requests_gpu(pod_spec: Mapping[str, Any]) -> bool:
    """True when any container asks for nvidia.com/gpu (limits or requests, as the device plugin counts), or
    uses a DRA claim (the testbed's only DeviceClass is gpu.nvidia.com: testbed/dra.py)."""
    for container in pod_spec.get("containers") or []:
        resources = container.get("resources") or {}
        if resources.get("claims"):
            return True
        for key in ("limits", "requests"):
            if GPU_RESOURCE in (resources.get(key) or {}):
                return True
    return False


def recording_name(annotations: Mapping[str, str] | None, pod_spec: Mapping[str, Any]) -> str:
    """The annotation's recording, else `h100` for a GPU pod and `cpu` for any other."""
    chosen = (annotations or {}).get(RECORDING_ANNOTATION)
    if chosen:
        return chosen
    return "h100" if requests_gpu(pod_spec) else "cpu"


SCENARIO_ANNOTATION = "k8s-gpu-acceptance/scenario"


def container_recordings(
    annotations: Mapping[str, str] | None,
    pod_spec: Mapping[str, Any],
    directory: Path | None = None,
    node_annotations: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The recording of each container, so several containers of one pod can print different logs.

    The pod's recording annotation wins for every container; else the same annotation on the pod's node (a
    node-level fault: every probe pod there prints it, e.g. one bad node in a fleet sweep); else the suite's
    scenario annotation names one (`<scenario>-<container>`, then `<scenario>`) when such a recording
    exists; else `h100` for a container that requests nvidia.com/gpu and `cpu` for any other.
    """
    chosen = (annotations or {}).get(RECORDING_ANNOTATION) or (node_annotations or {}).get(
        RECORDING_ANNOTATION
    )
    scenario = (annotations or {}).get(SCENARIO_ANNOTATION)
    out: dict[str, str] = {}
    for container in pod_spec.get("containers") or []:
        name = str(container.get("name"))
        if chosen:
            out[name] = chosen
            continue
        candidates = [f"{scenario}-{name}", scenario] if scenario else []
        found = [c for c in candidates if _safe(c) and recording_path(c, directory).is_file()]
        out[name] = found[0] if found else ("h100" if requests_gpu({"containers": [container]}) else "cpu")
    return out


def _safe(name: str) -> bool:
    return bool(name) and "/" not in name and not name.startswith(".")


def recording_path(name: str, directory: Path | None = None) -> Path:
    """`<dir>/<name>.log`; a name that tries to leave the directory is refused."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid recording name {name!r}")
    return (directory or recordings_dir()) / f"{name}.log"


def to_cri_log(data: bytes, timestamp: datetime | None = None) -> bytes:
    """Encode raw log bytes in the CRI log format so that a CRI log reader gives back exactly `data`."""
    stamp = (timestamp or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
    out = bytearray()
    *lines, last = data.split(b"\n")  # only "\n" ends a line for the reader (not "\r" or form feeds)
    for line in lines:
        out += stamp + b" stdout F " + line + b"\n"
    if last:  # a last line without its newline: `P` (partial) tells the reader not to add one
        out += stamp + b" stdout P " + last + b"\n"
    return bytes(out)


def cri_log_file(recording: Path, cache: Path) -> Path:
    """The CRI-format copy of a recording, one per content (pods share it; edits get a new file)."""
    data = recording.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    target = cache / f"{recording.stem}-{digest}.log"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(to_cri_log(data))
        os.replace(tmp, target)
    return target
