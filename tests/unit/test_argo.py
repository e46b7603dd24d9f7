"""Argo on the testbed (testbed/argo.py) and the GPU-sharing finding (sharing.envvar_sharing_finding):
the pure parts, without a cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from gpu_probe.document import parse_document

from k8s_gpu_acceptance.sharing import envvar_sharing_finding, gpu_sight
from testbed import argo

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "argo" / "gpu-sharing-workflow.yaml"


def _doc(name: str) -> dict:
    return parse_document((RECORDINGS / f"{name}.log").read_text())


GOMOD = """module github.com/argoproj/argo-workflows/v3

go 1.24.10

require (
\tgithub.com/olekukonko/tablewriter v0.0.5
)

replace github.com/olekukonko/tablewriter => github.com/olekukonko/tablewriter v0.0.5

replace (
\texample.com/a v1.0.0 => example.com/b v1.2.0 // a comment
\texample.com/local => ./local
\texample.com/abs => /abs/path
)
"""


def test_module_replaces_keeps_module_targets_and_drops_local_paths():
    assert argo.module_replaces(GOMOD) == [
        "example.com/a v1.0.0 => example.com/b v1.2.0",
        "github.com/olekukonko/tablewriter => github.com/olekukonko/tablewriter v0.0.5",
    ]
    assert argo.module_replaces("module x\n\ngo 1.22\n") == []


def test_copy_source_restores_the_symlinked_file_and_skips_tests_and_the_ui(tmp_path):
    moddir = tmp_path / "mod"
    osspecific = moddir / "workflow" / "executor" / "osspecific"
    osspecific.mkdir(parents=True)
    (osspecific / "signal_darwin.go").write_text("package osspecific\n")
    (osspecific / "command_test.go").write_text("package osspecific\n")
    (moddir / "ui").mkdir()
    (moddir / "ui" / "big.js").write_text("x")
    target = tmp_path / "copy"
    argo.copy_source(moddir, target)
    assert (target / "workflow/executor/osspecific/signal_linux.go").read_text() == "package osspecific\n"
    assert not (target / "workflow/executor/osspecific/command_test.go").exists()
    assert not (target / "ui").exists()
    # Once a release ships the file, the recipe must be told (a silent overwrite could hide a real change).
    (osspecific / "signal_linux.go").write_text("package osspecific // linux\n")
    with pytest.raises(argo.TestbedError, match="drop it from SYMLINKED_FILES"):
        argo.copy_source(moddir, target)


def test_controller_config_points_the_executor_at_the_host_apiserver_and_turns_metrics_off():
    data = argo.controller_config(32764)
    executor = yaml.safe_load(data["executor"])
    assert {"name": "KUBERNETES_SERVICE_PORT", "value": "32764"} in executor["env"]
    assert {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"} in executor["env"]
    assert yaml.safe_load(data["workflowDefaults"]) == {"spec": {"hostNetwork": True}}
    assert yaml.safe_load(data["metricsConfig"]) == {"enabled": False}


def test_executor_role_binding_binds_the_namespace_service_account():
    binding = argo.executor_role_binding("ns1")
    assert binding["roleRef"]["name"] == argo.EXECUTOR_ROLE and binding["metadata"]["namespace"] == "ns1"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default", "namespace": "ns1"}]


def test_executor_image_holds_argoexec_on_path(tmp_path):
    binary = tmp_path / "argoexec"
    binary.write_bytes(b"\x7fELF")
    spec = argo.executor_image_spec(binary)
    assert spec.files == {"bin/argoexec": binary} and "PATH=/bin" in spec.env and not spec.elf_closure


def _workflow(phase: str, nodes: dict) -> dict:
    return {"metadata": {"name": "wf"}, "status": {"phase": phase, "nodes": nodes}}


@pytest.mark.parametrize(
    ("message", "hopeless"),
    [
        ("Unschedulable: 0/7 nodes are available: 1 Insufficient nvidia.com/gpu.", True),
        ('Back-off pulling image "x": ErrImagePull', True),
        ("0/7 nodes are available: 1 node(s) had untolerated taint(s)", True),
        ("Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.", False),
        ("", False),
    ],
)
def test_workflow_problem_ends_the_wait_only_for_hopeless_steps(message, hopeless):
    wf = _workflow("Running", {"a": {"displayName": "check-gpu", "phase": "Pending", "message": message}})
    problem = argo.workflow_problem(wf)
    assert (problem is not None) is hopeless
    if hopeless:
        assert problem.startswith("step check-gpu: ")
    done = _workflow("Failed", {"a": {"displayName": "check-gpu", "phase": "Failed", "message": message}})
    assert argo.workflow_problem(done) is None


def test_workflow_summary_lists_pod_steps_in_order():
    wf = _workflow(
        "Failed",
        {
            "b": {"displayName": "end", "type": "Pod", "phase": "Failed", "startedAt": "2", "message": "boom",
                  "hostNodeName": "real-node"},
            "a": {"displayName": "start", "type": "Pod", "phase": "Succeeded", "startedAt": "1"},
            "d": {"displayName": "dag", "type": "DAG", "phase": "Failed", "startedAt": "0"},
        },
    )  # fmt: skip
    lines = argo.workflow_summary(wf).splitlines()
    assert lines[0].startswith("workflow wf: Failed")
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["start", "end"]
    assert "boom" in lines[2] and "real-node" in lines[2]


# --- the GPU-sharing workflow's finding -----------------------------------------------------------------


def test_a_later_step_that_sees_the_gpu_is_the_envvar_leak():
    allocated, leaking = _doc("h100-cluster"), _doc("isolation-void")
    assert gpu_sight(allocated).sees_gpu and gpu_sight(leaking).sees_gpu
    finding = envvar_sharing_finding(allocated, {"postprocess": leaking})
    assert finding.verdict == "leak" and finding.diagnosis is not None
    assert finding.diagnosis.rule == "isolation-envvar-leak"
    assert "GPU-sharing trick" in finding.diagnosis.cause and "security finding" in finding.diagnosis.cause
    assert json.loads(json.dumps(finding.as_dict()))["diagnosis"]["rule"] == "isolation-envvar-leak"


def test_later_steps_that_see_no_gpu_while_the_first_did_are_isolated():
    allocated, later = _doc("h100-cluster"), _doc("h100-cluster-no-request")
    assert not gpu_sight(later).sees_gpu
    finding = envvar_sharing_finding(allocated, {"preprocess": later, "postprocess": later})
    assert finding.verdict == "isolated" and finding.diagnosis is None
    assert "does not work on this cluster" in finding.reason
    assert set(finding.steps) == {"preprocess", "postprocess"}


def test_no_gpu_anywhere_is_not_assessable_not_isolated():
    finding = envvar_sharing_finding(_doc("cpu"), {"postprocess": _doc("cpu")})
    assert finding.verdict == "not assessable" and finding.diagnosis is None
    assert "proves nothing" in finding.reason


def test_the_example_workflow_requests_a_gpu_only_in_its_first_step_and_runs_least_privileged():
    workflow = yaml.safe_load(EXAMPLE.read_text())
    templates = {t["name"]: t for t in workflow["spec"]["templates"]}
    assert templates["allocate"]["script"]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    share = templates["share"]["script"]
    assert "resources" not in share
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "{{inputs.parameters.gpu-uuid}}"} in share["env"]
    assert workflow["spec"]["securityContext"]["runAsNonRoot"] is True
    for name in ("allocate", "share"):
        context = templates[name]["script"]["securityContext"]
        assert context["capabilities"] == {"drop": ["ALL"]} and context["allowPrivilegeEscalation"] is False


def test_up_argo_refuses_a_testbed_without_its_real_node(tmp_path):
    from testbed import lifecycle
    from testbed.state import State

    state = State("c", str(tmp_path), str(tmp_path / "kubeconfig"), str(tmp_path), "", "", "")
    with pytest.raises(argo.TestbedError, match="--argo needs the real node"):
        lifecycle.start_argo(state)
