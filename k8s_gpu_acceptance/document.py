"""The suite's typed view of the probe's JSON document: the one way the suite reads a probe layer.

Owns `ProbeDocument` (parse with the probe's own `gpu_probe.document.parse_document`, then read
`.layer(name)`, `.env`, `.identity`, `.started_at`) and `ProbeLayer` (status, metrics, evidence, error, the
probe's diagnosis). A layer the document does not hold reads as status `not-measured`: a probe from before
a layer was added still parses, and only that layer says it was not measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpu_probe.document import parse_document

NOT_MEASURED = "not-measured"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class ProbeLayer:
    """One layer's entry of the document: what the probe measured, and whether it passed."""

    name: str
    status: str
    metrics: Mapping[str, Any] = field(default_factory=dict)
    evidence: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    diagnosis: Mapping[str, Any] = field(default_factory=dict)
    duration_s: float | None = None

    @classmethod
    def of(cls, name: str, entry: Any) -> ProbeLayer:
        """Read one `layers.<name>` entry (anything that is not an object reads as not measured)."""
        if not isinstance(entry, Mapping):
            return cls(name, NOT_MEASURED, error="the probe document has no entry for this layer")
        error = entry.get("error")
        duration = entry.get("duration_s")
        return cls(
            name,
            str(entry.get("status")),
            _mapping(entry.get("metrics")),
            _mapping(entry.get("evidence")),
            str(error) if error else None,
            _mapping(entry.get("diagnosis")),
            float(duration) if isinstance(duration, (int, float)) else None,
        )

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def measured(self) -> bool:
        return self.status != NOT_MEASURED

    def metric(self, key: str, default: Any = None) -> Any:
        value = self.metrics.get(key)
        return default if value is None else value

    def evidence_texts(self) -> dict[str, str]:
        """The evidence as text (raw tool output stays as it is; structures become JSON), plus the error."""
        import json

        texts = {
            str(key): value if isinstance(value, str) else json.dumps(value, indent=1, default=str)
            for key, value in self.evidence.items()
        }
        if self.error and self.measured:
            texts["probe error"] = self.error
        return texts


class ProbeDocument:
    """A parsed probe document (schema in docs/ARCHITECTURE.md), read through typed accessors."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data: Mapping[str, Any] = data

    @classmethod
    def parse(cls, text: str | bytes) -> ProbeDocument:
        """Find and validate the document in a pod log or stdout; raises gpu_probe's ProbeOutputError."""
        return cls(parse_document(text))

    @classmethod
    def of(cls, document: ProbeDocument | Mapping[str, Any]) -> ProbeDocument:
        """Accept an already parsed document as the probe's plain dict too."""
        return document if isinstance(document, ProbeDocument) else cls(document)

    def layer(self, name: str) -> ProbeLayer:
        return ProbeLayer.of(name, _mapping(self.data.get("layers")).get(name))

    def metrics(self, name: str) -> Mapping[str, Any]:
        return self.layer(name).metrics

    @property
    def env(self) -> Mapping[str, Any]:
        return _mapping(self.data.get("env"))

    @property
    def identity(self) -> Mapping[str, Any]:
        return _mapping(self.data.get("identity"))

    @property
    def started_at(self) -> str:
        return str(self.data.get("started_at"))

    @property
    def duration_s(self) -> float:
        return float(self.data.get("duration_s") or 0)
