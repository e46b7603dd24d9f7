"""Nothing left behind, even after SIGKILL: the next run reaps what a killed run left, and says so; the
cleanup command lists (dry run) and deletes (--delete) what the suite's label and annotations prove
abandoned, and never touches a live run's objects."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid

from kubernetes import watch
from kubernetes.client.rest import ApiException
from suiterun import REPO, suite_command

RECORDING = "testbed.k8s-gpu-acceptance.io/recording"
EXPIRES = "k8s-gpu-acceptance/expires-at"
OWNER = "k8s-gpu-acceptance/owner"
MANAGED = {"app.kubernetes.io/managed-by": "k8s-gpu-acceptance"}


def wait_gone(core, selector: str, timeout_s: float = 90) -> list[str]:
    """Watch until no namespace matches `selector` (namespaces take a while to terminate)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listing = core.list_namespace(label_selector=selector)
        if not listing.items:
            return []
        for event in watch.Watch().stream(
            core.list_namespace,
            label_selector=selector,
            resource_version=listing.metadata.resource_version,
            timeout_seconds=max(1, int(min(10, deadline - time.monotonic()))),
        ):
            if event["type"] == "DELETED":
                break
    return [n.metadata.name for n in core.list_namespace(label_selector=selector).items]


def test_sigkill_during_the_probe_pod_wait_is_reaped_by_the_next_run(
    testbed, core, leftovers, tmp_path, run_suite
):
    killed = f"selftest-{uuid.uuid4().hex[:8]}"
    environ = {**os.environ, **testbed.env, "GPU_ACCEPTANCE_RUN_ID": killed}
    # Held by the testbed (no log until removed): the kill lands during the probe pod wait, whatever the load.
    command = suite_command(
        tmp_path / "reports",
        f"--kubeconfig={testbed.kubeconfig}",
        f"--pod-annotation={RECORDING}=h100",
        "--pod-annotation=testbed.k8s-gpu-acceptance.io/hold=true",
    )
    process = subprocess.Popen(
        command, cwd=tmp_path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    selector = f"k8s-gpu-acceptance/run-id={killed}"
    try:
        for _ in watch.Watch().stream(
            core.list_pod_for_all_namespaces, label_selector=selector, timeout_seconds=60
        ):
            break  # the probe pod exists: the run is in its wait
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    left = leftovers(selector)
    assert any(item.startswith("namespace/") for item in left), f"the killed run left nothing to reap: {left}"
    namespace = core.list_namespace(label_selector=selector).items[0]
    assert EXPIRES in namespace.metadata.annotations and OWNER in namespace.metadata.annotations

    run = run_suite()
    assert run.ret == 0, run.output
    assert (
        f"reaped namespace/gpu-acceptance-{killed} (run {killed}: its process (pid {process.pid}"
        in run.output
    )
    assert wait_gone(core, selector) == []
    assert leftovers(selector) == []


def cleanup(testbed, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "k8s_gpu_acceptance.cleanup",
        f"--kubeconfig={testbed.kubeconfig}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60, check=False)


def test_cleanup_command_is_a_dry_run_until_told_and_spares_live_runs(testbed, core):
    stamp = uuid.uuid4().hex[:6]
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    elsewhere = f"host=ci-runner-{stamp};boot=b;pidns=pid:[1];pid=1;start=1"
    made = {
        f"ga-expired-{stamp}": {EXPIRES: past, OWNER: elsewhere},
        f"ga-live-{stamp}": {EXPIRES: future, OWNER: elsewhere},
    }
    for name, notes in made.items():
        labels = {**MANAGED, "k8s-gpu-acceptance/run-id": name}
        core.create_namespace({"metadata": {"name": name, "labels": labels, "annotations": notes}})
    try:
        dry = cleanup(testbed)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert (
            f"would delete namespace/ga-expired-{stamp} (run ga-expired-{stamp}: expired at {past}"
            in dry.stdout
        )
        assert f"ga-live-{stamp}" not in dry.stdout
        assert core.read_namespace(f"ga-expired-{stamp}").metadata.deletion_timestamp is None  # dry run

        done = cleanup(testbed, "--delete")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"reaped namespace/ga-expired-{stamp}" in done.stdout
        assert wait_gone(core, f"k8s-gpu-acceptance/run-id=ga-expired-{stamp}") == []
        assert core.read_namespace(f"ga-live-{stamp}").metadata.deletion_timestamp is None

        named = cleanup(testbed, "--run-id", f"ga-live-{stamp}")
        assert f"would delete namespace/ga-live-{stamp} (run ga-live-{stamp}: --run-id)" in named.stdout
    finally:
        for name in made:
            with contextlib.suppress(ApiException):  # already gone: the test deleted it
                core.delete_namespace(name)
