"""The MPS memory-limit check: its parser, its allocation logic, how the suite reads and decides on its JSON.

Documents here are hand-built test inputs (dicts and strings written in this file), not recordings; the
allocation logic runs against a fake torch whose `empty` enforces (or ignores) a limit like an MPS server
would. The real recordings (`mps-limit.log`, `mps-limit-nodaemon.log`, made by record_mps_limit.sh on the
H100) are checked at the end only when present.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from k8s_gpu_acceptance import mps_check
from k8s_gpu_acceptance.diagnosis import diagnose_mps_memory_limit
from k8s_gpu_acceptance.mps_check import parse_mem_limit, parse_percentage, run_check
from k8s_gpu_acceptance.settings import Settings
from k8s_gpu_acceptance.sharing import (
    MPS_CHECK,
    MPS_FIELDS,
    MPS_LIMIT,
    SCENARIO_ANNOTATION,
    mps_limit_verdict,
    read_mps_check,
    scenario_pod,
)
from testbed.recordings import container_recordings

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"
ENV = {"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=4G", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50"}

# --- parse_mem_limit ---


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("0=4G", 4096),
        ("4096M", 4096),
        ("4G", 4096),
        ("0=1G,1=512MB", 1024),
        ("1=512MB,0=2GB", 2048),
        ("0=2GiB", 2048),
        ("0 = 1.5g", 1536),
        ("40520M", 40520),  # the device plugin's `<total/replicas MiB>M`
        ("1T", 1024 * 1024),
        ("2048K", 2),
        ("512M,1=8G", 512),  # a bare entry applies to every device
        ("1=8G", None),  # only another device is limited
        ("4096", None),  # no unit: not guessed
        ("0=lots", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_parse_mem_limit(text, mib):
    assert parse_mem_limit(text) == mib


def test_parse_mem_limit_per_device_wins_over_bare_entry():
    assert parse_mem_limit("8G,1=2G", device=1) == 2048
    assert parse_mem_limit("8G,1=2G", device=0) == 8192


@pytest.mark.parametrize(
    ("text", "value"), [("50", 50.0), ("12.5", 12.5), ("", None), (None, None), ("x", None)]
)
def test_parse_percentage(text, value):
    assert parse_percentage(text) == value


# --- run_check against a fake torch ---


class FakeOOM(RuntimeError):
    pass


FakeOOM.__name__ = "OutOfMemoryError"


def fake_torch(
    total_mib: int, enforce_mib: int | None, fail_with: Exception | None = None
) -> types.ModuleType:
    """A torch whose cuda allocations fail past `enforce_mib` in all (None: only past the device's total)."""
    torch = types.ModuleType("torch")
    held = {"mib": 0}
    cap = enforce_mib if enforce_mib is not None else total_mib

    def empty(nbytes, dtype=None, device=None):
        mib = nbytes // mps_check.MIB
        if fail_with is not None and held["mib"] + mib > cap:
            raise fail_with
        if held["mib"] + mib > cap:
            raise FakeOOM(f"CUDA out of memory. Tried to allocate {mib} MiB")
        held["mib"] += mib
        return object()

    torch.empty = empty  # type: ignore[attr-defined]
    torch.uint8 = "uint8"  # type: ignore[attr-defined]
    torch.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
        is_available=lambda: True,
        get_device_properties=lambda _i: types.SimpleNamespace(total_memory=total_mib * mps_check.MIB),
        synchronize=lambda: None,
    )
    return torch


def test_enforced_limit_passes(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", fake_torch(81559, enforce_mib=4096))
    doc = run_check(ENV)
    assert doc["error"] is None, doc
    assert doc["limit_mib"] == 4096 and doc["active_thread_percentage"] == 50.0
    assert doc["allocated_within_limit_mib"] == 3072  # 4096 - 1024 margin, in 256 MiB chunks
    assert doc["beyond_limit_allocation_failed"] is True
    assert "out of memory" in str(doc["beyond_error"]) and doc["device_total_mib"] == 81559
    assert mps_limit_verdict(doc).outcome == "pass"


def test_ignored_limit_fails(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", fake_torch(81559, enforce_mib=None))
    doc = run_check(ENV)
    assert (
        doc["error"] is None
        and doc["beyond_limit_allocation_failed"] is False
        and doc["beyond_error"] is None
    )
    assert doc["allocated_within_limit_mib"] == 3072
    verdict = mps_limit_verdict(doc)
    assert verdict.outcome == "fail" and "succeeded" in verdict.summary and "50.0" in verdict.summary


def test_limit_too_tight_to_allocate_within_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", fake_torch(81559, enforce_mib=1000))
    doc = run_check(ENV)
    assert doc["allocated_within_limit_mib"] == 768
    assert str(doc["error"]).startswith("within the limit: allocating 256 MiB after 768 MiB failed")
    assert mps_limit_verdict(doc).outcome == "skip"


def test_non_oom_failure_past_the_limit_is_an_error(monkeypatch):
    monkeypatch.setitem(
        sys.modules, "torch", fake_torch(81559, enforce_mib=4096, fail_with=RuntimeError("MPS client fault"))
    )
    doc = run_check(ENV)
    assert doc["beyond_limit_allocation_failed"] is False
    assert doc["beyond_error"] == "RuntimeError: MPS client fault"
    assert "not an out-of-memory error" in str(doc["error"])


def test_limit_beyond_the_device_proves_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", fake_torch(8192, enforce_mib=None))
    doc = run_check({"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=8G"})
    assert "exceeds the device's 8192 MiB" in str(doc["error"]) and doc["allocated_within_limit_mib"] == 0


def test_no_limit_set_is_an_error_without_touching_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` would raise
    doc = run_check({})
    assert doc["limit_mib"] is None and "no limit for device 0" in str(doc["error"])
    assert doc["active_thread_percentage"] is None


def test_unexpected_exception_becomes_the_error(monkeypatch):
    torch = fake_torch(81559, enforce_mib=4096)
    torch.cuda.get_device_properties = lambda _i: 1 / 0
    monkeypatch.setitem(sys.modules, "torch", torch)
    doc = run_check(ENV)
    assert doc["error"] == "unexpected: ZeroDivisionError: division by zero"


# --- the script as the pod runs it ---


def run_as_pod(
    python: str, *flags: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    source = MPS_CHECK.read_text(encoding="utf-8")
    return subprocess.run(
        [python, *flags, "-c", source],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "", **ENV, **(env or {})},
        check=False,
    )


def test_script_as_python_c_prints_one_document():
    done = run_as_pod(sys.executable)
    assert done.returncode == 0, done.stderr
    doc, error = read_mps_check(done.stdout)
    assert error is None and doc is not None
    assert done.stdout.count(mps_check.SCHEMA) == 1 and done.stdout.strip().startswith("{")
    assert doc["limit_mib"] == 4096 and doc["active_thread_percentage"] == 50.0
    assert doc["error"]  # no CUDA device here (CUDA_VISIBLE_DEVICES="")
    assert mps_limit_verdict(doc).outcome == "skip"


def test_script_on_a_bare_python38_without_torch():
    from test_probe_e2e import PYTHON38  # this folder is on sys.path (pytest's rootdir-less test modules)

    if PYTHON38 is None:
        pytest.skip("no working Python 3.8 here")
    done = run_as_pod(PYTHON38, "-S")
    assert done.returncode == 0, done.stderr
    doc, error = read_mps_check(done.stdout)
    assert error is None and doc is not None
    assert str(doc["error"]).startswith("torch is not importable")


# --- reading the document from a pod log ---


def hand_doc(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "schema": mps_check.SCHEMA,
        "schema_version": "1.0",
        "started_at": "2026-01-01T00:00:00Z",
        "limit_mib": 4096,
        "active_thread_percentage": 50.0,
        "allocated_within_limit_mib": 3072,
        "beyond_limit_allocation_failed": True,
        "beyond_error": "OutOfMemoryError: CUDA out of memory.",
        "device_total_mib": 81559,
        "error": None,
    }
    doc.update(changes)
    return doc


def test_read_tolerates_log_noise():
    raw = "warning: something\n{not json}\n" + json.dumps(hand_doc()) + "\ntrailing noise\n"
    doc, error = read_mps_check(raw)
    assert error is None and doc == hand_doc()


def test_read_skips_a_probe_document_and_says_none_found():
    doc, error = read_mps_check('gpu-probe: driver\n{"schema_version": "1.0", "layers": {}}\n', "pod ns/p")
    assert doc is None and f"no {mps_check.SCHEMA} document in pod ns/p" in str(error)
    assert read_mps_check("")[0] is None


def test_read_truncated_document():
    doc, error = read_mps_check(json.dumps(hand_doc())[:80])
    assert doc is None and "not valid JSON" in str(error)


def test_read_wrong_version_and_mistyped_fields():
    assert "expected 1.x" in str(read_mps_check(json.dumps(hand_doc(schema_version="2.0")))[1])
    bad = hand_doc(beyond_limit_allocation_failed="yes", limit_mib=True)
    del bad["device_total_mib"]
    doc, error = read_mps_check(json.dumps(bad))
    assert doc is None
    assert "limit_mib, beyond_limit_allocation_failed, device_total_mib" in str(error)


def test_every_field_the_script_writes_is_checked(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", fake_torch(81559, enforce_mib=4096))
    assert set(run_check(ENV)) == {"schema", "schema_version", *MPS_FIELDS}


# --- the decision ---


def test_verdicts_on_hand_built_documents():
    assert mps_limit_verdict(hand_doc()).outcome == "pass"
    assert "refused" in mps_limit_verdict(hand_doc()).summary
    failed = mps_limit_verdict(hand_doc(beyond_limit_allocation_failed=False, beyond_error=None))
    assert failed.outcome == "fail" and "active thread percentage 50.0" in failed.summary
    skipped = mps_limit_verdict(
        hand_doc(error="torch.cuda.is_available() is False", active_thread_percentage=None)
    )
    assert skipped.outcome == "skip" and "is_available() is False" in skipped.summary
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE unset in the client" in skipped.summary


def test_not_enforced_diagnosis_names_cause_and_fix():
    diagnosis = diagnose_mps_memory_limit("gpu-node-mps", "0=4G", "limit 4096 MiB ... succeeded")
    assert diagnosis.rule == "mps-memory-limit-not-enforced" and diagnosis.layer == "sharing"
    assert (
        "an MPS client allocated past its pinned memory limit: the limit is not enforced" in diagnosis.cause
    )
    assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=4G" in diagnosis.seen
    assert "sharing.mps" in diagnosis.fix and "mps-control-daemon" in diagnosis.fix


# --- the pod ---


def test_mps_limit_pod_runs_the_script_with_the_limit(tmp_path):
    pod = scenario_pod(
        Settings(),
        "r1",
        "ns",
        "gpu-mps-limit",
        "cm",
        [],
        scenario="mps-limit",
        layers="",
        node="gpu-node-mps",
        env={mps_check.LIMIT_ENV: MPS_LIMIT},
        script=MPS_CHECK,
    )
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python3", "-c", MPS_CHECK.read_text(encoding="utf-8")]
    assert {"name": "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "value": "0=4G"} in container["env"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["nodeSelector"]["kubernetes.io/hostname"] == "gpu-node-mps"
    assert pod["metadata"]["annotations"][SCENARIO_ANNOTATION] == "mps-limit"
    # the testbed serves `mps-limit.log` to this pod when that recording exists, else the h100 one
    assert container_recordings(pod["metadata"]["annotations"], pod["spec"], tmp_path) == {"probe": "h100"}
    (tmp_path / "mps-limit.log").write_text("{}")
    assert container_recordings(pod["metadata"]["annotations"], pod["spec"], tmp_path) == {
        "probe": "mps-limit"
    }


# --- the H100 recordings, once made ---


@pytest.mark.parametrize(("name", "outcome"), [("mps-limit", "pass"), ("mps-limit-nodaemon", "fail")])
def test_h100_recordings_when_present(name, outcome):
    path = RECORDINGS / f"{name}.log"
    if not path.is_file():
        pytest.skip(f"recording {path.name} not yet recorded (tests/data/recordings/record_mps_limit.sh)")
    doc, error = read_mps_check(path.read_text(encoding="utf-8"))
    assert doc is not None, error
    assert mps_limit_verdict(doc).outcome == outcome, doc
