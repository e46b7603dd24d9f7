"""The probe's JSON document: schema constants, rendering, and the parser the suite reads pod logs with.

Pure functions only (no I/O), so the suite can import this module anywhere and the unit tests can feed it
arbitrary text. See docs/ARCHITECTURE.md, "Probe document", for the contract.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

SCHEMA_VERSION = "1.0"
LAYER_NAMES = ("driver", "nvidia_smi", "torch_cuda", "gpu_perf", "gpt2")
STATUSES = ("pass", "fail", "error", "skipped")
LAYER_KEYS = ("status", "duration_s", "metrics", "evidence", "error", "diagnosis")
TOP_LEVEL_KEYS = (
    "schema_version",
    "probe",
    "started_at",
    "duration_s",
    "identity",
    "env",
    "exit_code",
    "layers",
)
IDENTITY_KEYS = (
    "hostname",
    "pod_name",
    "pod_namespace",
    "node_name",
    "in_kubernetes",
    "python",
    "platform",
    "user_uid",
)

EXIT_OK = 0
EXIT_LAYER_FAILED = 1
EXIT_USAGE = 2

# Where a document starts: the first key is always schema_version (render_document keeps it first), so this
# finds the document even when a log prefix (timestamps, a library's JSON log line) shares its line.
_START = re.compile(r'\{\s*"schema_version"\s*:')
_PREVIEW_CHARS = 120


class ProbeOutputError(ValueError):
    """The text does not hold one valid probe document; the message says what was expected and seen."""


def _preview(text: str) -> str:
    """The first bytes of the text, quoted, so an error message shows what the log really held."""
    head = text.strip()[:_PREVIEW_CHARS]
    return repr(head) + ("..." if len(text.strip()) > _PREVIEW_CHARS else "")


def parse_document(text: str | bytes) -> dict[str, Any]:
    """Find, decode and validate the probe document inside a pod log.

    Log noise before and after the document is tolerated (pod logs merge stderr into stdout). Raises
    ProbeOutputError on empty, garbled or truncated input, a wrong schema_version or a broken structure.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not text.strip():
        raise ProbeOutputError(
            "expected a gpu-probe JSON document (schema_version "
            f"{SCHEMA_VERSION}) in the probe output, but the output is empty"
        )
    decoder = json.JSONDecoder()
    first_failure: str | None = None
    for match in _START.finditer(text):
        try:
            doc, _end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError as exc:
            if first_failure is None:
                # A cut inside a string reports the string's start, not the end of the text: still a cut.
                truncated = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
                first_failure = (
                    f"the document starting at character {match.start()} is not valid JSON "
                    f"({exc.msg} at line {exc.lineno} column {exc.colno}: "
                    + ("the output ends there, truncated" if truncated else "garbled output")
                    + ")"
                )
            continue
        if isinstance(doc, dict):
            check_schema_version(doc)
            validate_document(doc)
            return doc
    if first_failure is not None:
        raise ProbeOutputError(
            f"expected a complete gpu-probe JSON document, but {first_failure}; output starts with "
            f"{_preview(text)}"
        )
    raise ProbeOutputError(
        'expected a gpu-probe JSON document (an object starting with {"schema_version": ...}) in the probe '
        f"output, but found none; {len(text)} characters, starting with {_preview(text)}"
    )


def check_schema_version(doc: dict[str, Any]) -> None:
    """Refuse a document whose major schema version differs from the one this code reads."""
    version = doc.get("schema_version")
    if not isinstance(version, str) or version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise ProbeOutputError(
            f"expected schema_version {SCHEMA_VERSION!r} (same major version), got {version!r}: "
            "the probe image and the suite are out of step; rebuild the image from container/"
        )


def document_problems(doc: Any) -> list[str]:
    """Every way the document breaks the required structure (empty list = valid; a missing layer is none)."""
    if not isinstance(doc, dict):
        return [f"the document is a {type(doc).__name__}, not a JSON object"]
    problems = [f"missing top-level key {key!r}" for key in TOP_LEVEL_KEYS if key not in doc]
    if not isinstance(doc.get("schema_version"), str):
        problems.append("schema_version is not a string")
    for key in ("probe", "identity", "env"):
        if key in doc and not isinstance(doc[key], dict):
            problems.append(f"{key} is not an object")
    identity = doc.get("identity")
    if isinstance(identity, dict):
        problems.extend(f"identity lacks {key!r}" for key in IDENTITY_KEYS if key not in identity)
    if "exit_code" in doc and (isinstance(doc["exit_code"], bool) or not isinstance(doc["exit_code"], int)):
        problems.append("exit_code is not an integer")
    if "duration_s" in doc and not _is_number(doc["duration_s"]):
        problems.append("duration_s is not a number")
    layers = doc.get("layers")
    if "layers" in doc and not isinstance(layers, dict):
        problems.append("layers is not an object")
    elif isinstance(layers, dict):
        # A layer the document lacks is not a problem of the document: a probe from before that layer was
        # added still parses, and the reader reports the missing layer as not measured (issue 9).
        for name, entry in layers.items():
            problems.extend(f"layer {name!r}: {p}" for p in layer_problems(entry))
    return problems


def layer_problems(layer: Any) -> list[str]:
    """Every way one layer result breaks {status, duration_s, metrics, evidence, error, diagnosis}."""
    if not isinstance(layer, dict):
        return ["not a JSON object"]
    problems = [f"missing key {key!r}" for key in LAYER_KEYS if key not in layer]
    if "status" in layer and layer["status"] not in STATUSES:
        problems.append(f"status {layer['status']!r} is not one of {', '.join(STATUSES)}")
    if "duration_s" in layer and not _is_number(layer["duration_s"]):
        problems.append("duration_s is not a number")
    for key in ("metrics", "evidence"):
        if key in layer and not isinstance(layer[key], dict):
            problems.append(f"{key} is not an object")
    if "error" in layer and layer["error"] is not None and not isinstance(layer["error"], str):
        problems.append("error is neither null nor a string")
    diagnosis = layer.get("diagnosis")
    if diagnosis is not None and not (
        isinstance(diagnosis, dict)
        and isinstance(diagnosis.get("cause"), str)
        and isinstance(diagnosis.get("fix"), str)
    ):
        problems.append("diagnosis is neither null nor {cause: str, fix: str}")
    return problems


def validate_document(doc: Any) -> None:
    """Raise ProbeOutputError listing every structural problem of a decoded document."""
    problems = document_problems(doc)
    if problems:
        raise ProbeOutputError("the probe document breaks its schema: " + "; ".join(problems))


def _is_number(value: Any) -> bool:
    """True for int/float but not bool (JSON has no bools-as-numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def json_safe(value: Any) -> Any:
    """A copy that strict JSON can hold: NaN/inf become null, tuples lists, unknown objects their str()."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def render_document(doc: dict[str, Any]) -> str:
    """Pretty-printed strict JSON, schema_version first, the opening brace at column 0."""
    ordered = {"schema_version": doc.get("schema_version", SCHEMA_VERSION)}
    ordered.update((k, v) for k, v in doc.items() if k != "schema_version")
    return json.dumps(json_safe(ordered), indent=2, allow_nan=False, ensure_ascii=False)
