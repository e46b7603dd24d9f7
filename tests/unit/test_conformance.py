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
    checks: dict[tuple[str, str], Check] = {}
    conformance.fold(checks, Check("r", "t1", "passed"))
    conformance.fold(checks, Check("r", "t1", "error", "teardown failed"))
    conformance.fold(checks, Check("r", "t1", "passed"))
    conformance.fold(checks, Check("r", "t2", "passed"))
    assert [(c.test, c.outcome) for c in checks.values()] == [("t1", "error"), ("t2", "passed")]


def sweep_checks(outcomes: dict[str, str]) -> list[Check]:
    test = "tests/gpu/test_4_driver.py::test_driver_and_devices_visible"
    return [
        Check("driver_runtime_management", f"{test}[{node}]", outcome, f"no GPU on {node}", "driver", node)
        for node, outcome in outcomes.items()
    ]


def test_a_sweeps_per_node_checks_are_one_evidence_line_per_test():
    passed = conformance.evidence(sweep_checks({f"gpu-node-{i}": "passed" for i in range(1, 1001)}))
    assert [(line.test, line.outcome, line.summary) for line in passed] == [
        ("tests/gpu/test_4_driver.py::test_driver_and_devices_visible", "passed", "passed on 1000 nodes")
    ]
    outcomes = {f"gpu-node-{i}": "passed" for i in range(1, 11)} | {
        "gpu-node-8": "failed",
        "gpu-node-9": "blocked",
    }
    (line,) = conformance.evidence(sweep_checks(outcomes))
    assert line.outcome == "failed"
    assert line.summary == (
        "failed on 1 of 10 nodes (gpu-node-8); blocked on 1 of 10 nodes (gpu-node-9); passed on 8 of 10 nodes"
    )
    assert line.messages == ("gpu-node-8: no GPU on gpu-node-8", "gpu-node-9: no GPU on gpu-node-9")
    # a test that is not per node stays its own line, parameters and all
    plain = conformance.evidence(
        [Check("r", "tests/gpu/t.py::t[x]", "passed"), Check("r", "t2", "failed", "m")]
    )
    assert [(line.test, line.summary) for line in plain] == [
        ("tests/gpu/t.py::t[x]", "passed"),
        ("t2", "failed"),
    ]


def test_the_html_and_the_fragment_summarize_a_sweep_and_report_json_keeps_every_check():
    checks = sweep_checks({f"gpu-node-{i}": "passed" for i in range(1, 1001)})
    data = conformance.section(checks)
    driver = next(r for r in data["requirements"] if r["id"] == "driver_runtime_management")
    assert len(driver["checks"]) == 1000 and driver["checks"][0]["node"] == "gpu-node-1"
    html = conformance.section_html(data)
    assert html.count("test_driver_and_devices_visible") == 1 and "passed on 1000 nodes" in html
    document = conformance.fragment(checks, {"run_id": "r1", "cluster": "c1", "started_at": "t"})
    (item,) = [i for items in document["spec"].values() for i in items]
    assert item["evidence"] == [
        "k8s-gpu-acceptance run r1 on c1 (t): "
        "tests/gpu/test_4_driver.py::test_driver_and_devices_visible passed on 1000 nodes"
    ]


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
