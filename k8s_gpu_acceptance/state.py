"""What one run learned, kept in one place so the layer tests, the blocking logic and the reports agree.

Owns `RunState`, `LayerOutcome` and the config stash keys. The plugin keeps one RunState on
`config.stash[RUN_STATE]`; the fixtures record what they gathered (cluster facts, device plugin facts, the
probe run, sharing findings), the report hook records each layer's outcome, and the reports read only this at
session end. Tests do not write into it: they fail with a diagnosis or record a scenario finding through the
`record_scenario` fixture.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from k8s_gpu_acceptance.cluster import ClusterFacts, Connection, DevicePluginFacts
from k8s_gpu_acceptance.conformance import Check
from k8s_gpu_acceptance.diagnosis import Diagnosis
from k8s_gpu_acceptance.document import ProbeDocument, ProbeLayer
from k8s_gpu_acceptance.dra import DraFacts
from k8s_gpu_acceptance.fleet import SweepPlan, SweepRun
from k8s_gpu_acceptance.nightly import NightlyOutcome
from k8s_gpu_acceptance.probe import ProbeRun
from k8s_gpu_acceptance.settings import Settings

Outcome = Literal["passed", "failed", "blocked", "skipped", "error"]


@dataclass
class LayerOutcome:
    """How one layer ended, and why, in the words a reviewer needs; metrics and evidence are what the
    layer's test saw itself (the probe's own are read from the probe document)."""

    layer: str
    outcome: Outcome
    duration_s: float = 0.0
    message: str = ""
    blocked_by: str | None = None
    diagnosis: Diagnosis | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)


SCENARIO_MARKERS = ("isolation", "exhaustion", "sharing", "distinct_gpus", "serving")
"""The scenario checks: not layers of the chain, but their outcome counts in the run's verdict."""


@dataclass
class ScenarioOutcome:
    """How one scenario test ended (isolation, exhaustion, sharing, distinct_gpus, serving): a run of
    `pytest -m sharing` has no layer outcome at all, and its verdict is these."""

    name: str  # the test without `test_`, with its parameters: `pod_without_gpu_request_sees_no_gpu[x]`
    group: str  # its marker: isolation, exhaustion or sharing
    outcome: Outcome
    duration_s: float = 0.0
    message: str = ""
    diagnosis: Diagnosis | None = None


@dataclass
class RunState:
    """The run's identity, the facts its fixtures gathered, and the per-layer outcomes."""

    run_id: str
    target: str
    started_at: dt.datetime
    cluster: ClusterFacts | None = None
    device_plugin: DevicePluginFacts | None = None
    dra: DraFacts | None = None  # the DeviceClass and ResourceSlices, when read (--allocation dra/auto)
    allocation: str | None = None  # device-plugin or dra, as resolved for this run
    # AI Conformance evidence, keyed by (requirement, test node id) (conformance.fold)
    conformance: dict[tuple[str, str], Check] = field(default_factory=dict)
    probe: ProbeRun | None = None
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Each scenario test's outcome (by node id), and the `scenarios` keys it recorded (by node id).
    scenario_outcomes: dict[str, ScenarioOutcome] = field(default_factory=dict)
    scenario_findings: dict[str, list[str]] = field(default_factory=dict)
    layers: dict[str, LayerOutcome] = field(default_factory=dict)
    finished_at: dt.datetime | None = None
    # The fleet sweep (--all-nodes): its pods, and per node the probe's run and each node layer's outcome.
    sweep: SweepRun | None = None
    node_probes: dict[str, ProbeRun] = field(default_factory=dict)
    node_layers: dict[str, dict[str, LayerOutcome]] = field(default_factory=dict)

    @property
    def probe_document(self) -> ProbeDocument | None:
        return self.probe.document if self.probe is not None else None

    def probe_layer(self, name: str) -> ProbeLayer | None:
        """The probe document's entry for a layer (None without a document)."""
        document = self.probe_document
        return document.layer(name) if document is not None else None

    def failed_root(self, names: list[str]) -> LayerOutcome | None:
        """The first of `names` (nearest dependency first) that failed or was itself blocked."""
        for name in names:
            outcome = self.layers.get(name)
            if outcome is not None and outcome.outcome in ("failed", "error", "blocked"):
                return outcome
        return None


SETTINGS = pytest.StashKey[Settings]()
"""The validated options, set in pytest_configure (the `gpu_settings` fixture's default)."""
RUN_STATE = pytest.StashKey[RunState]()
CONNECTION = pytest.StashKey[Connection]()
"""The API client made (and validated) at configure time for an acceptance run on a cluster."""
REPORTS_ON = pytest.StashKey[bool]()
SWEEP_PLAN = pytest.StashKey[SweepPlan]()
"""The fleet sweep's nodes, listed once at collection (its tests are parametrized by node)."""
NIGHTLY = pytest.StashKey[NightlyOutcome]()
"""Tonight's key figures, verdicts and the history read: set at session end by report_hooks.py."""
