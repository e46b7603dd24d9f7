"""How a layer test fails and what it keeps: `fail` with a Diagnosis (rendered without a traceback),
`LayerEvidence` (what the test saw itself, for the reports) and `passed_probe_layer` (the probe layer a test
asserts on, or the failure that explains why it did not pass). Owns no rule: every rule is in diagnosis.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

import pytest

from k8s_gpu_acceptance.diagnosis import (
    Diagnosis,
    diagnose_no_document,
    diagnose_probe_layer,
    diagnose_probe_output,
)
from k8s_gpu_acceptance.document import ProbeLayer
from k8s_gpu_acceptance.probe import ProbeRun
from k8s_gpu_acceptance.settings import Settings


class LayerFailed(pytest.fail.Exception):  # type: ignore[name-defined]
    """A layer's failure: the message is the diagnosis (seen, cause, fix), not a stack trace."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        super().__init__(diagnosis.render(), pytrace=False)
        self.diagnosis = diagnosis


def fail(diagnosis: Diagnosis) -> NoReturn:
    """Fail the current layer test with this diagnosis."""
    raise LayerFailed(diagnosis)


@dataclass
class LayerEvidence:
    """What a layer test saw itself, for report.html and report.json (metrics are numbers and short facts).

    The probe's own metrics and evidence are not copied here: the reports read them from the document."""

    metrics: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)


EVIDENCE = pytest.StashKey[LayerEvidence]()


def passed_probe_layer(run: ProbeRun, name: str, settings: Settings, target: str) -> ProbeLayer:
    """The probe's entry for `name`; fails with a diagnosis unless it passed."""
    if run.document is None:
        # The driver layer is the first probe layer: it carries the cause; the ones above point at it.
        if name == "driver":
            fail(diagnose_probe_output(run.error or "the probe printed nothing"))
        fail(diagnose_no_document(name, run.error))
    layer = run.document.layer(name)
    if not layer.passed:
        fail(
            diagnose_probe_layer(
                name, layer, target=target, runtime_class=settings.runtime_class, env=run.document.env
            )
        )
    return layer
