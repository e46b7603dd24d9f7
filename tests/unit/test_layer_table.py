"""The suite's layer table (k8s_gpu_acceptance/layers.py) and the probe's (gpu_probe) agree, and adding a
probe layer does not invalidate the recordings made before it."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import gpu_probe.document
import pytest
from gpu_probe.core import LAYER_TIMEOUT_S
from gpu_probe.document import ProbeOutputError
from gpu_probe.layers import LAYER_FUNCS

from k8s_gpu_acceptance import layers as suite_layers
from k8s_gpu_acceptance import report
from k8s_gpu_acceptance.diagnosis import diagnose_probe_layer
from k8s_gpu_acceptance.document import NOT_MEASURED, ProbeDocument
from k8s_gpu_acceptance.layers import BY_NAME, LAYERS, PROBE_LAYER_NAMES, Layer, ancestors
from k8s_gpu_acceptance.probe import ProbeRun
from k8s_gpu_acceptance.settings import Settings
from k8s_gpu_acceptance.sharing import read_mps_check
from k8s_gpu_acceptance.state import LayerOutcome, RunState

REPO = Path(__file__).resolve().parents[2]
RECORDINGS = REPO / "tests" / "data" / "recordings"
PROBE_LAYERS_DIR = REPO / "container" / "gpu_probe" / "layers"
NOT_PROBE_DOCUMENTS = {"garbled.log": "garbled", "mps-limit.log": "mps", "mps-limit-nodaemon.log": "mps"}


def test_the_probe_measures_exactly_the_suites_probe_layers():
    probe = set(gpu_probe.document.LAYER_NAMES)
    assert probe == set(PROBE_LAYER_NAMES)
    assert probe == set(LAYER_FUNCS) == set(LAYER_TIMEOUT_S)  # each has its measure function and timeout


def test_both_orders_put_every_layer_after_what_it_depends_on():
    """The probe measures gpu_perf before gpt2 and the suite reports gpt2 first: both are fine, because
    neither depends on the other; what must hold is that every dependency comes first in both orders."""
    suite_order = [layer.name for layer in LAYERS]
    probe_order = list(gpu_probe.document.LAYER_NAMES)
    for layer in LAYERS:
        for dependency in ancestors(layer.name):
            assert suite_order.index(dependency) < suite_order.index(layer.name)
            if layer.measured_by_probe and BY_NAME[dependency].measured_by_probe:
                assert probe_order.index(dependency) < probe_order.index(layer.name), (layer, dependency)


@pytest.mark.parametrize("name", sorted(PROBE_LAYER_NAMES))
def test_a_probe_layer_reads_only_results_of_layers_it_depends_on(name):
    """The probe's layers read earlier layers' results (ctx.results[...]); the suite's table must name them
    as dependencies, or blocking would not match what the probe really needs."""
    source = (PROBE_LAYERS_DIR / f"{name}.py").read_text(encoding="utf-8")
    read = set(re.findall(r"ctx\.results(?:\.get\(|\[)\s*\"(\w+)\"", source))
    assert read <= set(ancestors(name)), f"{name} reads {read - set(ancestors(name))} without depending on it"


def recordings() -> list[Path]:
    return sorted(RECORDINGS.glob("*.log"))


def test_the_recordings_are_all_classified():
    names = {path.name for path in recordings()}
    assert set(NOT_PROBE_DOCUMENTS) <= names
    assert len(names - set(NOT_PROBE_DOCUMENTS)) >= 10  # h100, cpu, isolation-*, mps, timeslice-*


@pytest.fixture
def dummy_layer(monkeypatch):
    """A new probe layer `dummy`, depending on torch_cuda, added to both tables (as a new layer would be)."""
    dummy = Layer("dummy", "Dummy", "a layer added after the recordings were made", "torch_cuda", False, True)
    monkeypatch.setattr(gpu_probe.document, "LAYER_NAMES", (*gpu_probe.document.LAYER_NAMES, "dummy"))
    for module in (suite_layers, report):
        monkeypatch.setattr(module, "LAYERS", (*LAYERS, dummy))
        monkeypatch.setattr(module, "BY_NAME", {**BY_NAME, "dummy": dummy})
    return dummy


@pytest.mark.parametrize("path", recordings(), ids=lambda p: p.name)
def test_every_recording_still_parses_with_a_new_probe_layer(dummy_layer, path):
    text = path.read_text(encoding="utf-8")
    kind = NOT_PROBE_DOCUMENTS.get(path.name)
    if kind == "garbled":
        with pytest.raises(ProbeOutputError, match="truncated"):
            ProbeDocument.parse(text)
        return
    if kind == "mps":
        document, error = read_mps_check(text, path.name)
        assert document is not None, error
        return
    document = ProbeDocument.parse(text)
    assert "dummy" in gpu_probe.document.LAYER_NAMES
    for name in PROBE_LAYER_NAMES:
        assert document.layer(name).measured, name
    dummy = document.layer("dummy")
    assert dummy.status == NOT_MEASURED and not dummy.passed
    diagnosis = diagnose_probe_layer("dummy", dummy, target="k8s", runtime_class=None, env=document.env)
    assert diagnosis.rule == "layer-missing" and "not measured" in diagnosis.seen


def test_the_report_lists_the_new_layer_as_not_measured(dummy_layer):
    document = ProbeDocument.parse((RECORDINGS / "h100.log").read_text(encoding="utf-8"))
    state = RunState(
        "r1",
        "local",
        dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc),
        probe=ProbeRun("local", document, "", None, "this host", 1.0),
    )
    state.layers["driver"] = LayerOutcome("driver", "passed")
    state.layers["dummy"] = LayerOutcome("dummy", "failed", message="not measured")
    entries = {e["name"]: e for e in report.build_json_report(state, Settings())["layers"]}
    assert list(entries)[-1] == "dummy"
    assert entries["dummy"]["probe_status"] == NOT_MEASURED and entries["dummy"]["title"] == "Dummy"
    assert entries["driver"]["probe_status"] == "pass" and entries["driver"]["metrics"]["gpu_count"] == 1
