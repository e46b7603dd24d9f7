"""The serving check (`pytest -m serving`, tests/gpu/test_14_serving.py) for real on the testbed's REAL node.

The GPT-2 service really runs there (real kubelet, containerd, runc; CPU; the built-in tiny model), the load
goes through the real API server's service proxy, and the real scheduler leaves the extra replica Pending
because the node's 4 FAKE nvidia.com/gpu are held. TESTBED ONLY: torch and transformers come from this
project's venv, mounted read-only with a hostPath by a conftest that overrides the suite's
`customize_serving_deployment` fixture (testbed/serving.py); the image is the probe image plus the system
libraries the venv's compiled modules load. A real cluster passes an image holding torch (--serving-image).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from suiterun import REPO, SuiteRun, assert_nothing_left

from testbed.node import REAL_NODE_LABEL
from testbed.serving import import_serving_image

CONFTEST = '''"""TESTBED ONLY: the serving Deployment mounts this project's venv read-only."""
import pytest

from testbed.serving import mount_site_packages


@pytest.fixture(scope="session")
def customize_serving_deployment():
    return mount_site_packages
'''
# Small enough for 2 shared cores, every level of the default sweep.
LIGHT = ("--model=tiny-random-gpt2", "--serving-new-tokens=8", "--serving-requests-per-client=3")


@pytest.fixture(scope="module")
def serving_image(testbed: Any) -> str:
    """The probe image plus the venv's system libraries, imported into the real node (cached by content)."""
    if not testbed.real_node:
        pytest.fail("the testbed has no real node: bring it up with `python -m testbed up`")
    return import_serving_image()


@pytest.fixture
def run_serving(testbed: Any, tmp_path: Path, leftovers: Callable[..., list[str]]) -> Any:
    """Run `pytest -m serving` as a user runs it, from a folder holding the suite's pytest.ini, the testbed's
    conftest (unless mount=False) and tests/gpu/test_14_serving.py (a link, not a copy); afterwards prove
    the run left nothing behind."""
    runs: list[SuiteRun] = []

    def run(
        image: str, *args: str, mount: bool = True, interrupt: Callable[[str], None] | None = None
    ) -> SuiteRun:
        """One run; with `interrupt(run_id)`, which returns at the moment to stop it, SIGTERM then."""
        folder = tmp_path / f"run-{len(runs)}"
        folder.mkdir()
        (folder / "pytest.ini").write_text(
            (REPO / "pytest.ini").read_text().replace("testpaths = tests/gpu", "testpaths = .")
        )
        if mount:
            (folder / "conftest.py").write_text(CONFTEST)
        (folder / "test_14_serving.py").symlink_to(REPO / "tests" / "gpu" / "test_14_serving.py")
        run_id = f"selftest-{uuid.uuid4().hex[:8]}"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-m",
            "serving",
            "--report-dir=reports",
            f"--kubeconfig={testbed.kubeconfig}",
            f"--image={image}",
            f"--node-selector=kubernetes.io/hostname={testbed.real_node}",
            "--toleration=nvidia.com/gpu:NoSchedule",
            f"--toleration={REAL_NODE_LABEL}=true:NoSchedule",
            "--pod-timeout=120",
            *args,
        ]
        env = {**os.environ, **testbed.env, "GPU_ACCEPTANCE_RUN_ID": run_id, "PYTHONPATH": str(REPO)}
        started = time.monotonic()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=folder
        )
        runs.append(SuiteRun(-1, "", run_id, folder / "reports", 0.0))
        try:
            if interrupt is not None:
                interrupt(run_id)
                process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=420)
        finally:
            if process.poll() is None:
                process.kill()
        suite_run = SuiteRun(
            process.returncode, output, run_id, folder / "reports", time.monotonic() - started
        )
        runs[-1] = suite_run
        return suite_run

    yield run
    for suite_run in runs:
        assert_nothing_left(leftovers, suite_run.run_id)


def scenario(run: SuiteRun, name: str) -> dict[str, Any]:
    return next(s for s in run.report["scenarios"] if s["name"] == name)


def test_the_service_is_loaded_and_one_replica_too_many_stays_pending(
    run_serving: Any, serving_image: str, testbed: Any
) -> None:
    run = run_serving(serving_image, *LIGHT)
    assert run.ret == 0, run.output
    assert run.report["schema_version"] == "1.5"
    serving = run.report["serving"]
    assert serving["node"] == testbed.real_node and serving["path"] == "API server service proxy"
    levels = serving["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 2, 4, 8], levels
    for lv in levels:
        assert lv["ok"] == lv["requests"] == 3 * lv["concurrency"] and lv["errors"] == {}, lv
        assert lv["p50_ms"] <= lv["p95_ms"] <= lv["p99_ms"] and lv["tokens_per_s"] > 0, lv
        assert 0 < lv["server_generate_ms_p50"] <= lv["p50_ms"], lv
    assert 0 < serving["proxy_round_trip_ms_p50"] < levels[0]["p50_ms"], serving
    scaling = serving["scaling"]
    assert scaling["replicas"] == scaling["free_gpus_besides_the_first_replica"] + 2, scaling
    assert (scaling["bound"], scaling["pending"]) == (scaling["replicas"] - 1, 1), scaling
    pending = scaling["pending_replica"]
    assert "Insufficient nvidia.com/gpu" in pending["scheduler"] and pending["rule"] == "insufficient-gpu"
    assert "free nvidia.com/gpu" in pending["cause"] and pending["fix"], pending
    outcomes = {s["name"]: s["outcome"] for s in run.report["scenarios"]}
    assert outcomes == {
        "service_answers_under_load": "passed",
        "one_replica_more_than_the_free_gpus_stays_pending": "passed",
    }, outcomes
    html = (run.report_dir / "report.html").read_text()
    assert "Serving: GPT-2 service under load" in html and 'class="serving-sweep"' in html
    for n in (1, 2, 4, 8):
        assert f'data-clients="{n}"' in html
    assert "Insufficient nvidia.com/gpu" in html and pending["pod"] in html
    junit = (run.report_dir / "junit.xml").read_text()
    assert 'name="serving.pending_reason"' in junit and 'name="serving.summary"' in junit
    print(
        f"serving self-test: {run.wall_s:.1f}s; levels {[(lv['concurrency'], lv['p50_ms']) for lv in levels]}"
    )


def test_an_impossible_p50_budget_fails_with_the_figures_and_the_budget(
    run_serving: Any, serving_image: str
) -> None:
    run = run_serving(
        serving_image,
        *LIGHT,
        "--serving-levels=1",
        "--serving-max-p50-ms=0.01",
        "-k",
        "under_load",
    )
    assert run.ret == 1, run.output
    entry = scenario(run, "service_answers_under_load")
    diagnosis = entry["diagnosis"]
    assert entry["outcome"] == "failed" and diagnosis["rule"] == "serving-latency", entry
    assert "at 1 client(s) > budget 0.01 ms (--serving-max-p50-ms)" in diagnosis["seen"], diagnosis
    assert "--serving-max-p50-ms" in diagnosis["fix"], diagnosis
    assert run.report["outcome"] == "failed"


def test_an_image_without_torch_fails_fast_with_the_servers_own_words(run_serving: Any, testbed: Any) -> None:
    run = run_serving(testbed.probe_image, *LIGHT, mount=False)
    assert run.ret == 1, run.output
    entry = scenario(run, "service_answers_under_load")
    diagnosis = entry["diagnosis"]
    assert diagnosis["rule"] == "serving-server-exited", diagnosis
    assert "No module named 'torch'" in diagnosis["seen"], diagnosis
    assert "--serving-image" in diagnosis["fix"], diagnosis
    skipped = scenario(run, "one_replica_more_than_the_free_gpus_stays_pending")
    assert skipped["outcome"] == "skipped" and "never became ready" in skipped["message"], skipped
    assert run.wall_s < 120, f"took {run.wall_s:.0f}s: not fast"


def test_sigterm_while_waiting_for_readiness_leaves_nothing(
    run_serving: Any, serving_image: str, testbed_api: Any
) -> None:
    """CI cancels with SIGTERM: the suite turns it into Ctrl-C, and the serving fixture, interrupted in its
    readiness wait (pytest then drops its finalizers), deletes what it made; run_serving checks nothing is
    left."""
    from kubernetes import client, watch

    apps = client.AppsV1Api(testbed_api)

    def when_deployed(run_id: str) -> None:
        selector = f"k8s-gpu-acceptance/run-id={run_id}"
        for _event in watch.Watch().stream(
            apps.list_deployment_for_all_namespaces, label_selector=selector, timeout_seconds=90
        ):
            return
        pytest.fail("the serving Deployment did not appear within 90 s")

    run = run_serving(serving_image, *LIGHT, interrupt=when_deployed)
    assert run.ret == 2, run.output  # interrupted
    assert "KeyboardInterrupt: signal 15" in run.output, run.output[-2000:]
