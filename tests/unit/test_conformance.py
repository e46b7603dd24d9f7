"""AI Conformance evidence: folding checks into requirement statuses, the fragment, the DCGM metrics check."""

from __future__ import annotations

import yaml

from k8s_gpu_acceptance import conformance, dcgm
from k8s_gpu_acceptance.conformance import Check

DCGM_TEXT = """# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a",device="nvidia0",modelName="NVIDIA H100 80GB HBM3"} 3
DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-b",device="nvidia1",Hostname="n1"} 0
DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-a"} 512
DCGM_FI_DEV_FB_USED{gpu="1",UUID="GPU-b"} 0
DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a"} 31
DCGM_FI_DEV_GPU_TEMP{gpu="1",UUID="GPU-b"} 30
DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-a"} 71.5
"""


def test_status_passed_failed_or_not_assessed():
    assert conformance.status([Check("r", "t1", "passed"), Check("r", "t2", "skipped")]) == "passed"
    assert conformance.status([Check("r", "t1", "passed"), Check("r", "t2", "blocked")]) == "failed"
    assert conformance.status([Check("r", "t1", "skipped")]) == "not-assessed"
    assert conformance.status([]) == "not-assessed"


def test_a_tests_worst_phase_wins():
    checks: list[Check] = []
    conformance.fold(checks, Check("r", "t1", "passed"))
    conformance.fold(checks, Check("r", "t1", "error", "teardown failed"))
    conformance.fold(checks, Check("r", "t1", "passed"))
    assert [(c.test, c.outcome) for c in checks] == [("t1", "error")]


def test_dra_support_counts_only_in_a_dra_run():
    assert conformance.applies("dra_support", "dra")
    assert not conformance.applies("dra_support", "device-plugin") and not conformance.applies(
        "dra_support", None
    )
    assert conformance.applies("secure_accelerator_access", "device-plugin")


def test_fragment_lists_only_assessed_requirements_with_evidence(tmp_path):
    checks = [
        Check("dra_support", "tests/gpu/test_2.py::t", "passed", layer="device_plugin"),
        Check("secure_accelerator_access", "tests/gpu/test_10.py::t", "failed", "a pod saw GPU-a"),
        Check("accelerator_metrics", "tests/gpu/test_12.py::t", "skipped", "no DCGM exporter"),
    ]
    run = {
        "run_id": "r1",
        "cluster": "c1",
        "started_at": "2026-11-25T21:00:00Z",
        "report": "https://x/report.html",
    }
    document = conformance.fragment(checks, run)
    ids = {item["id"]: item for items in document["spec"].values() for item in items}
    assert set(ids) == {"dra_support", "secure_accelerator_access"}  # metrics were not assessed: left out
    assert ids["dra_support"]["status"] == "Implemented"
    assert ids["secure_accelerator_access"]["status"] == "Not Implemented"
    assert "a pod saw GPU-a" in ids["secure_accelerator_access"]["notes"]
    assert "https://x/report.html" in ids["dra_support"]["evidence"]
    assert "dra_support" in document["spec"]["accelerators"][0]["id"]
    written = conformance.write_fragment(tmp_path / "c.yaml", document)
    assert yaml.safe_load(written.read_text()) == document
    section = conformance.section(checks)
    by_id = {r["id"]: r for r in section["requirements"]}
    assert by_id["accelerator_metrics"]["status"] == "not-assessed"
    assert by_id["gpu_sharing"]["checks"] == []
    html = conformance.section_html(section)
    assert 'data-requirement="dra_support"' in html and "not-assessed" in html


def test_dcgm_metrics_are_checked_per_gpu():
    result = dcgm.check_series(DCGM_TEXT)
    assert result.gpus == ["GPU-a", "GPU-b"]
    assert result.found == {
        "utilization": "DCGM_FI_DEV_GPU_UTIL",
        "memory": "DCGM_FI_DEV_FB_USED",
        "temperature": "DCGM_FI_DEV_GPU_TEMP",
        "power": "DCGM_FI_DEV_POWER_USAGE",
    }
    assert result.missing == [] and result.incomplete == {"DCGM_FI_DEV_POWER_USAGE": ["GPU-b"]}
    no_temperature = "\n".join(line for line in DCGM_TEXT.splitlines() if "TEMP" not in line)
    assert dcgm.check_series(no_temperature).missing == ["temperature"]
    assert dcgm.is_dcgm_exporter("nvidia-dcgm-exporter", {}) and not dcgm.is_dcgm_exporter("kube-dns", {})
