"""The plugin with --allocation and the AI Conformance evidence, in-process with pytester (no cluster): the
option, the probe pod spec it gives, and the requirement ids in junit.xml, report.json and
--conformance-out."""

from __future__ import annotations

import json

import pytest
from test_plugin import report_json, suite, with_recording  # noqa: F401 (suite is a fixture)

pytest_plugins = ["pytester"]

SPEC_TEST = """
def test_spec(probe_pod_spec, allocation):
    assert allocation == "dra"
    spec = probe_pod_spec["spec"]
    container = spec["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["resources"]["claims"] == [{"name": "gpu"}]
    assert spec["resourceClaims"][0]["resourceClaimTemplateName"].startswith("gpu-probe-")
"""


def test_allocation_dra_gives_the_probe_pod_a_claim_instead_of_a_limit(suite):  # noqa: F811
    with_recording(suite, "h100")
    suite.makepyfile(test_spec=SPEC_TEST)
    result = suite.runpytest("--target=local", "--allocation=dra", "-m", "gpu or not gpu", "--report-dir=out")
    result.assert_outcomes(passed=6)


def test_an_unknown_allocation_is_a_usage_error(suite):  # noqa: F811
    suite.makepyfile(test_x="def test_x():\n    pass\n")
    result = suite.runpytest("--allocation=plugin")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--allocation: invalid choice: 'plugin'*"])


def test_requirement_ids_reach_junit_report_json_and_the_fragment(suite):  # noqa: F811
    with_recording(suite, "h100")
    result = suite.runpytest(
        "--target=local", "-m", "gpu", "--report-dir=out", "--conformance-out=out/c.json"
    )
    result.assert_outcomes(passed=5)
    junit = (suite.path / "out" / "junit.xml").read_text(encoding="utf-8")
    assert junit.count('<property name="ai_conformance" value="driver_runtime_management" />') == 2
    report = report_json(suite)
    layers = {entry["name"]: entry["ai_conformance"] for entry in report["layers"]}
    assert layers["driver"] == layers["torch_cuda"] == ["driver_runtime_management"]
    assert layers["nvidia_smi"] == []
    statuses = {r["id"]: r["status"] for r in report["ai_conformance"]["requirements"]}
    assert statuses["driver_runtime_management"] == "passed"
    assert statuses["dra_support"] == "not-assessed"  # no claim on --target local: never claimed
    fragment = json.loads((suite.path / "out" / "c.json").read_text(encoding="utf-8"))
    assert [item["id"] for items in fragment["spec"].values() for item in items] == [
        "driver_runtime_management"
    ]
    result.stdout.fnmatch_lines(["*AI Conformance evidence -> out/c.json*"])


def test_allocation_dra_with_a_fleet_sweep_is_a_usage_error(suite):  # noqa: F811
    suite.makepyfile(test_x="def test_x():\n    pass\n")
    result = suite.runpytest("--allocation=dra", "--all-nodes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--allocation*fleet sweep does not yet request GPUs through DRA*"])
