"""Sharing, isolation and exhaustion, run as a user runs them (`pytest -m exhaustion` etc.) on the testbed.

Real apiserver and scheduler (holders, extra pods and MIG/time-slicing requests are placed by it); probe
pods print real recordings (testbed/README.md). Each scenario's pass and fail paths are shown with their
diagnosis; after every run nothing labelled with its run id, and nothing managed by the suite, is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECORDINGS = REPO / "tests" / "data" / "recordings"
RECORDING = "testbed.k8s-gpu-acceptance.io/recording"
SCENARIO_TAINT = "testbed.k8s-gpu-acceptance.io/scenario"
MANAGED = "app.kubernetes.io/managed-by=k8s-gpu-acceptance"
TIMESLICE_RECORDINGS = ["timeslice-exclusive", *(f"timeslice-4-{i}" for i in range(4))]


def h100_uuid() -> str:
    """The GPU UUID of h100.log, the recording the testbed serves a GPU pod by default."""
    text = (RECORDINGS / "h100.log").read_text(encoding="utf-8")
    document = json.loads(text[text.index('{\n  "schema_version"') :])
    (gpu,) = document["layers"]["driver"]["metrics"]["gpus"]
    return str(gpu["uuid"])


class Run:
    def __init__(self, done: subprocess.CompletedProcess[str], run_id: str, report_dir: Path) -> None:
        self.ret = done.returncode
        self.output = done.stdout + done.stderr
        self.run_id = run_id
        self.report_dir = report_dir

    @property
    def sharing(self) -> dict:
        report = json.loads((self.report_dir / "report.json").read_text())
        return report["environment_details"].get("sharing", {})


@pytest.fixture
def suite(testbed, tmp_path, leftovers):
    """Run `pytest -m <marker>` against the testbed; afterwards prove nothing of the run is left."""
    runs: list[Run] = []

    def run(marker: str, *args: str) -> Run:
        run_id = f"sharing-{uuid.uuid4().hex[:8]}"
        report_dir = tmp_path / f"reports-{len(runs)}"
        command = [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--rootdir={REPO}",
            "-c", str(REPO / "pytest.ini"), str(REPO / "tests" / "gpu"), "-m", marker,
            f"--report-dir={report_dir}", "--pod-timeout=60", f"--kubeconfig={testbed.kubeconfig}", *args,
        ]  # fmt: skip
        env = {**os.environ, **testbed.env, "GPU_ACCEPTANCE_RUN_ID": run_id}
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        runs.append(Run(done, run_id, report_dir))
        return runs[-1]

    yield run
    for r in runs:
        left = leftovers(f"k8s-gpu-acceptance/run-id={r.run_id}")
        assert not left, f"run {r.run_id} left objects behind: {left}"
    managed = leftovers(MANAGED, run_id_prefix="sharing-")
    assert not [x for x in managed if "sharing-" in x], managed


def toleration(scenario: str) -> str:
    return f"--toleration={SCENARIO_TAINT}={scenario}:NoSchedule"


# --- exhaustion ---


def test_exhaustion_fills_each_gpu_node_and_one_more_stays_pending(suite):
    run = suite("exhaustion")
    assert run.ret == 0, run.output
    fit = run.sharing["exhaustion"]["gpu_pods_fit_per_node"]
    assert fit["gpu-node-1"]["fit"] == 1 and fit["gpu-node-8"]["fit"] == 8, fit
    for node in ("gpu-node-1", "gpu-node-8"):
        assert "Insufficient nvidia.com/gpu" in fit[node]["extra_pod"], fit
    assert "gpu-node-ts" not in fit  # tainted scenario nodes are not the suite's to fill


def test_exhaustion_holders_that_cannot_start_are_diagnosed(suite):
    run = suite("exhaustion", "--image=registry.example/does-not-exist:1")
    assert run.ret == 1, run.output
    assert "only 0 of 1 one-GPU holder pods started" in run.output, run.output
    assert "ErrImagePull" in run.output and "fix:" in run.output


# --- isolation ---


def test_isolation_pods_without_gpu_request_see_none(suite):
    run = suite("isolation")
    assert run.ret == 0, run.output
    for variant in ("no-request", "visible-all", "visible-uuid"):
        assert run.sharing[f"isolation.{variant}"]["verdict"] == "isolated", run.sharing
    assert run.sharing["isolation.visible-uuid"]["env"] == {"NVIDIA_VISIBLE_DEVICES": h100_uuid()}


def test_isolation_leak_fails_with_fixes_and_allow_envvar_sharing_records_it(suite):
    run = suite("isolation", f"--pod-annotation={RECORDING}=h100", "-k", "sees_no_gpu")
    assert run.ret == 1, run.output
    assert "3 failed" in run.output, run.output
    assert "a pod without an nvidia.com/gpu request (visible-all) sees a GPU" in run.output
    assert (
        "volume-mounts" in run.output
        and "accept-nvidia-visible-devices-envvar-when-unprivileged" in run.output
    )
    allowed = suite("isolation", f"--pod-annotation={RECORDING}=h100", "--allow-envvar-sharing")
    assert allowed.ret == 0, allowed.output
    assert (
        allowed.sharing["isolation.visible-all"]["verdict"] == "deliberate sharing (--allow-envvar-sharing)"
    )


def test_privileged_gpu_pod_is_reported(suite, core, testbed_namespace):
    body = {
        "metadata": {
            "name": "privileged-gpu",
            "labels": {"app.kubernetes.io/managed-by": "k8s-gpu-acceptance"},
        },
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    "securityContext": {"privileged": True},
                }
            ]
        },
    }
    core.create_namespaced_pod(testbed_namespace, body)
    run = suite("isolation", "-k", "privileged")
    assert run.ret == 1, run.output
    assert f"{testbed_namespace}/privileged-gpu (main)" in run.output and "drop securityContext" in run.output


# --- several containers of one pod ---


def test_multi_container_reports_which_container_saw_which_uuid(suite):
    run = suite("sharing", "-k", "containers")
    assert run.ret == 0, run.output
    seen = run.sharing["multi_container"]
    assert seen["uuids_seen"]["probe (requests nvidia.com/gpu)"] == [h100_uuid()]
    assert seen["uuids_seen"]["shared (no request)"] == [] and seen["mode"].startswith("not shared")
    shared = suite("sharing", "-k", "containers", f"--pod-annotation={RECORDING}=h100")
    assert shared.ret == 0 and shared.sharing["multi_container"]["mode"].startswith("shared"), shared.output
    broken = suite("sharing", "-k", "containers", f"--pod-annotation={RECORDING}=cpu")
    assert broken.ret == 1 and "requested nvidia.com/gpu but sees no GPU" in broken.output, broken.output


# --- time-slicing ---


def test_time_slicing_skips_with_reason_when_its_nodes_are_not_tolerated(suite):
    run = suite("sharing", "-k", "time_slicing", "-rs")
    assert run.ret == 0, run.output
    assert "time-slicing: the time-sliced node(s) gpu-node-ts" in run.output, run.output


def test_time_slicing_full_speed_replicas_are_diagnosed(suite):
    run = suite(
        "sharing", "-k", "time_slicing", toleration("time-slicing"), f"--pod-annotation={RECORDING}=h100"
    )
    assert run.ret == 1, run.output
    assert "measured shares outside 0.5x..1.5x of 1/N" in run.output, run.output
    entry = run.sharing["time_slicing"]
    assert entry["replicas"] == 4 and [s["share"] for s in entry["shares"]] == [1.0] * 4


def test_time_slicing_real_h100_recordings_show_the_share(suite):
    missing = [n for n in TIMESLICE_RECORDINGS if not (RECORDINGS / f"{n}.log").is_file()]
    if missing:
        pytest.skip(
            f"recordings {', '.join(missing)} not yet recorded (tests/data/recordings/record_sharing.sh)"
        )
    run = suite("sharing", "-k", "time_slicing", toleration("time-slicing"))
    entry = run.sharing["time_slicing"]
    assert entry["all_running_together_s"] > 0, entry
    assert run.ret == 0, run.output


# --- MPS and MIG ---


def test_mps_is_reported(suite):
    run = suite("sharing", "-k", "mps_client_sees", toleration("mps"))
    assert run.ret == 0, run.output
    assert run.sharing["mps"]["expected_active_thread_percentage"] == 50.0


def test_mps_memory_limit_log_without_a_check_document_fails_clearly(suite):
    run = suite("sharing", "-k", "cannot_exceed", toleration("mps"), f"--pod-annotation={RECORDING}=h100")
    assert run.ret == 1, run.output
    assert "no k8s-gpu-acceptance/mps-check document" in run.output, run.output


def _mps_recording(name: str) -> None:
    if not (RECORDINGS / f"{name}.log").is_file():
        pytest.skip(
            f"recording {name}.log not yet recorded (tests/data/recordings/record_mps_limit.sh on the H100)"
        )


def test_mps_memory_limit_real_h100_recording_is_enforced(suite):
    _mps_recording("mps-limit")
    run = suite("sharing", "-k", "cannot_exceed", toleration("mps"), "-rs")
    assert run.ret == 0, run.output
    entry = run.sharing["mps.memory_limit"]
    if entry["verdict"] == "skip":
        pytest.skip(f"the recorded mps-limit.log says the check could not run: {entry['error']}")
    assert entry["verdict"] == "pass" and entry["beyond_limit_allocation_failed"] is True, entry


def test_mps_memory_limit_not_enforced_is_diagnosed(suite):
    _mps_recording("mps-limit-nodaemon")
    run = suite(
        "sharing",
        "-k",
        "cannot_exceed",
        toleration("mps"),
        f"--pod-annotation={RECORDING}=mps-limit-nodaemon",
    )
    assert run.ret == 1, run.output
    assert "an MPS client allocated past its pinned memory limit" in run.output, run.output
    assert "mps-control-daemon" in run.output and "fix:" in run.output


def test_mig_slice_goes_through_the_scheduler_and_memory_check_skips_without_recording(suite):
    run = suite("sharing", "-k", "mig", toleration("mig"), "-rs")
    assert run.ret == 0, run.output
    assert run.sharing["mig"]["ran_on"] == "gpu-node-mig" and run.sharing["mig"]["scheduled_by"]
    assert "there is no real MIG recording" in run.output


def test_no_sharing_configuration_skips_with_reasons(suite):
    run = suite("sharing", "-k", "mps or mig", "-rs")
    assert run.ret == 0, run.output
    assert "mps: node gpu-node-mps does not accept the suite's pods" in run.output
    assert "mig: no node that accepts the suite's pods advertises nvidia.com/mig-*" in run.output
