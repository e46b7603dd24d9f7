"""--allocation dra against the live testbed: the REAL kube-scheduler (v1.36) allocates the probe pod's claim
from the testbed's SIMULATED ResourceSlices (testbed/dra.py: no DRA kubelet plugin; kwok plays the kubelet and
the pod prints its recorded probe document). Pass path and the two fail paths, each run leaving nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml
from kubernetes import client

from testbed import dra as testbed_dra
from testbed.nodes import default_nodes

LAYERS = ("cluster", "device_plugin", "scheduling", "driver", "nvidia_smi", "torch_cuda", "gpt2", "gpu_perf")


def test_dra_allocation_passes_every_layer_with_conformance_evidence(run_suite, tmp_path):
    fragment = tmp_path / "ai-conformance.yaml"
    run = run_suite("--allocation=dra", f"--conformance-out={fragment}")
    assert run.ret == 0, run.output
    assert [(e["name"], e["outcome"]) for e in run.report["layers"]] == [(n, "passed") for n in LAYERS]
    allocation = run.layer("device_plugin")["metrics"]
    assert allocation["allocation"] == "dra" and allocation["device_class"] == "gpu.nvidia.com"
    assert allocation["devices_per_node"]["gpu-node-8"] == 8
    assert allocation["driver_versions"] == [testbed_dra.DRIVER_VERSION]
    scheduling = run.layer("scheduling")["metrics"]
    assert scheduling["allocation"] == "dra" and scheduling["node"].startswith("gpu-node-")
    # AI Conformance: ids in report.json and junit.xml, the HTML section, a fragment of what was assessed
    assert run.layer("device_plugin")["ai_conformance"] == ["dra_support"]
    requirements = {r["id"]: r for r in run.report["ai_conformance"]["requirements"]}
    assert requirements["dra_support"]["status"] == "passed"
    assert requirements["driver_runtime_management"]["status"] == "passed"
    metrics = requirements["accelerator_metrics"]
    assert metrics["status"] == "not-assessed" and "no DCGM exporter" in metrics["checks"][0]["message"]
    junit = (run.report_dir / "junit.xml").read_text()
    assert '<property name="ai_conformance" value="dra_support" />' in junit
    assert 'data-requirement="dra_support"' in (run.report_dir / "report.html").read_text()
    document = yaml.safe_load(fragment.read_text())
    assessed = {item["id"]: item["status"] for items in document["spec"].values() for item in items}
    assert assessed == {"dra_support": "Implemented", "driver_runtime_management": "Implemented"}


def test_auto_picks_dra_when_the_class_and_slices_exist(run_suite):
    run = run_suite("--allocation=auto", markers="gpu and (cluster or device_plugin)")
    assert run.ret == 0, run.output
    assert run.layer("device_plugin")["metrics"]["allocation"] == "dra"


@pytest.fixture
def no_device_class(testbed_api: client.ApiClient) -> Iterator[None]:
    """The DeviceClass deleted for one test, and the testbed's DRA objects restored after it."""
    client.ResourceV1Api(testbed_api).delete_device_class(testbed_dra.DEVICE_CLASS)
    try:
        yield
    finally:
        testbed_dra.reconcile(testbed_api, default_nodes())


def test_missing_device_class_fails_the_allocation_layer_and_blocks_scheduling(run_suite, no_device_class):
    run = run_suite("--allocation=dra")
    assert run.ret == 1, run.output
    allocation = run.layer("device_plugin")
    assert allocation["outcome"] == "failed"
    assert allocation["diagnosis"]["rule"] == "dra-deviceclass-missing"
    assert "nvidia-dra-driver-gpu" in allocation["diagnosis"]["fix"]
    assert (run.layer("scheduling")["outcome"], run.layer("scheduling")["blocked_by"]) == (
        "blocked",
        "device_plugin",
    )


def test_claim_for_more_gpus_than_any_node_has_is_diagnosed_by_scheduling(run_suite):
    run = run_suite("--allocation=dra", "--gpus=9")
    assert run.ret == 1, run.output
    scheduling = run.layer("scheduling")
    assert scheduling["outcome"] == "failed"
    assert "cannot allocate all claims" in scheduling["diagnosis"]["seen"]
    assert "dra-cannot-allocate" in scheduling["diagnosis"]["rule"]
    assert "9 free gpu.nvidia.com" in scheduling["diagnosis"]["cause"]
    assert scheduling["metrics"]["waited_s"] < 30  # fails fast on Unschedulable, not at --pod-timeout


def test_isolation_and_multi_container_work_the_same_under_dra(run_suite):
    run = run_suite("--allocation=dra", markers="isolation or sharing")
    assert run.ret == 0, run.output
    junit = (run.report_dir / "junit.xml").read_text()
    assert "only the requesting container sees the GPU" in junit  # the claim is the first container's only
    assert '<property name="isolation.no-request.verdict" value="isolated" />' in junit
