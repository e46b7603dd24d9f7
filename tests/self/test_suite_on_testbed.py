"""The suite itself, run as a user runs it (a pytest subprocess, `-m gpu`), against the live testbed.

Real API server, admission, scheduler and MinIO; only the kubelet is simulated (kwok), and the probe pod's
log is a real recording chosen by annotation (see testbed/README.md). Every run gets its own run id, and
afterwards nothing carrying that id may be left on the cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import boto3
from suiterun import assert_nothing_left, suite_command

RECORDING = "testbed.k8s-gpu-acceptance.io/recording"
HOLD_ANNOTATION = "testbed.k8s-gpu-acceptance.io/hold"  # testbed/controller.py: no log until removed
SECRET_MARKER = "do-not-leak"


def test_h100_recording_passes_every_layer_and_reports_reach_minio(run_suite, testbed):
    bucket = f"selftest-{uuid.uuid4().hex[:8]}"
    run = run_suite(f"--s3-bucket={bucket}", "--s3-prefix=nightly")
    assert run.ret == 0, run.output
    report = run.report
    assert report["schema_version"] == "1.5" and report["outcome"] == "passed"
    assert [(e["name"], e["outcome"]) for e in report["layers"]] == [
        (name, "passed")
        for name in (
            "cluster",
            "device_plugin",
            "scheduling",
            "driver",
            "nvidia_smi",
            "torch_cuda",
            "gpt2",
            "gpu_perf",
        )
    ]
    assert run.layer("scheduling")["metrics"]["node"].startswith(
        "gpu-node-"
    )  # a GPU node, chosen by the scheduler
    for name in ("report.html", "report.json", "junit.xml"):
        assert (run.report_dir / name).is_file()
    s3 = boto3.client(
        "s3",
        endpoint_url=testbed.env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=testbed.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=testbed.env["AWS_SECRET_ACCESS_KEY"],
        region_name=testbed.env["AWS_DEFAULT_REGION"],
    )
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    for name in ("report.html", "report.json", "junit.xml"):
        assert any(k.startswith("nightly/") and k.endswith(f"/{run.run_id}/{name}") for k in keys), keys
    assert "nightly/latest.json" in keys
    html = (run.report_dir / "report.html").read_text()
    assert "NVIDIA H100 80GB HBM3" in html and "gpu-node-" in html
    secret = testbed.env["AWS_SECRET_ACCESS_KEY"]
    for name in ("report.html", "report.json", "junit.xml"):
        assert secret not in (run.report_dir / name).read_text(), f"credential leaked into {name}"
    assert secret not in run.output


def test_cpu_recording_fails_driver_and_blocks_the_layers_above(run_suite):
    run = run_suite(f"--pod-annotation={RECORDING}=cpu")
    assert run.ret == 1, run.output
    driver = run.layer("driver")
    assert driver["outcome"] == "failed"
    assert "/proc/driver/nvidia/version" in driver["diagnosis"]["seen"]
    for name in ("nvidia_smi", "torch_cuda", "gpt2", "gpu_perf"):
        assert (run.layer(name)["outcome"], run.layer(name)["blocked_by"]) == ("blocked", "driver"), name
    assert "BLOCKED by driver" in run.output


def test_too_many_gpus_fails_fast_naming_insufficient_gpus(run_suite):
    run = run_suite("--gpus=64")
    assert run.ret == 1
    scheduling = run.layer("scheduling")
    assert scheduling["outcome"] == "failed"
    assert "Insufficient nvidia.com/gpu" in scheduling["diagnosis"]["seen"]
    assert "64 free nvidia.com/gpu" in scheduling["diagnosis"]["cause"]
    assert run.layer("driver")["blocked_by"] == "scheduling"
    assert run.wall_s < 60, f"took {run.wall_s:.0f}s: the Unschedulable state must end the wait at once"


def test_tainted_only_nodes_without_toleration_name_the_taint(run_suite):
    run = run_suite("--node-selector=kubernetes.io/hostname=gpu-node-8", "--toleration=none")
    assert run.ret == 1
    diagnosis = run.layer("scheduling")["diagnosis"]
    assert "untolerated taint" in diagnosis["seen"]
    assert "--toleration nvidia.com/gpu=true:NoSchedule" in diagnosis["fix"]


def test_bad_image_fails_fast_naming_the_pull_error(run_suite):
    run = run_suite("--image=registry.example.invalid/does-not-exist:0.0")
    assert run.ret == 1
    scheduling = run.layer("scheduling")
    assert scheduling["diagnosis"]["rule"] == "image-pull"
    assert (
        "ErrImagePull" in scheduling["diagnosis"]["seen"]
        or "ImagePullBackOff" in scheduling["diagnosis"]["seen"]
    )
    assert run.wall_s < 60


def test_missing_runtime_class_is_rejected_by_admission_and_named(run_suite):
    run = run_suite("--runtime-class=no-such-runtime")
    assert run.ret == 1
    diagnosis = run.layer("scheduling")["diagnosis"]
    assert diagnosis["rule"] == "runtimeclass-missing", diagnosis


def test_garbled_probe_output_is_a_clear_driver_failure(run_suite):
    run = run_suite(f"--pod-annotation={RECORDING}=garbled")
    assert run.ret == 1
    driver = run.layer("driver")
    assert driver["outcome"] == "failed"
    assert "not a valid probe document" in driver["diagnosis"]["seen"]


def test_unreachable_api_server_fails_in_seconds(run_suite, tmp_path):
    kubeconfig = tmp_path / "unreachable.kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: gone\n"
        "clusters: [{name: gone, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: gone, context: {cluster: gone, user: u}}]\n"
    )
    run = run_suite(kubeconfig=kubeconfig)
    assert run.ret == 1
    cluster = run.layer("cluster")
    assert "connection to https://127.0.0.1:1 refused" in cluster["diagnosis"]["seen"]
    assert all(run.layer(n)["outcome"] == "blocked" for n in ("device_plugin", "scheduling", "driver"))
    assert run.wall_s < 30, f"took {run.wall_s:.0f}s"


def test_refused_s3_upload_keeps_local_reports_and_says_so(run_suite, testbed):
    run = run_suite("--s3-bucket=reports", env={"AWS_SECRET_ACCESS_KEY": SECRET_MARKER + "-wrong"})
    assert run.ret == 6, run.output
    assert "UPLOAD FAILED" in run.output
    assert SECRET_MARKER not in run.output
    for name in ("report.html", "report.json", "junit.xml"):
        assert (run.report_dir / name).is_file()
        assert SECRET_MARKER not in (run.report_dir / name).read_text()


def _sigint_as_at_a_terminal() -> None:
    """In the suite's process before exec: Ctrl-C's default action. A shell without job control starts a
    background job (`make test &`) with SIGINT ignored, the suite's process inherits that, Python then
    installs no KeyboardInterrupt handler, and the SIGINT below would be lost (seen in a CI rehearsal
    launched with `&`: the run went on to its pod timeout)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_the_probe_pod_exists_cleans_up(testbed, core, leftovers, tmp_path):
    run_id = f"selftest-{uuid.uuid4().hex[:8]}"
    environ = {**os.environ, **testbed.env, "GPU_ACCEPTANCE_RUN_ID": run_id}
    # Held: the testbed serves no log until the run is interrupted, so Ctrl-C lands during the pod wait
    # (without it, a loaded machine once delivered the watch event after the whole run had finished).
    command = suite_command(
        tmp_path / "reports",
        f"--kubeconfig={testbed.kubeconfig}",
        f"--pod-annotation={RECORDING}=h100",
        f"--pod-annotation={HOLD_ANNOTATION}=true",
    )
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_sigint_as_at_a_terminal,
    )
    selector = f"k8s-gpu-acceptance/run-id={run_id}"
    deadline = time.monotonic() + 60
    try:
        from kubernetes import watch

        for _ in watch.Watch().stream(
            core.list_pod_for_all_namespaces, label_selector=selector, timeout_seconds=60
        ):
            break
        assert time.monotonic() < deadline, "the probe pod never appeared"
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            raise AssertionError(f"the suite did not stop within 120 s of Ctrl-C:\n{output}") from None
    finally:
        if process.poll() is None:
            process.kill()
    # Interrupted (pytest's exit code 2), not a run that went on to fail its layers (1).
    assert process.returncode == 2 and "KeyboardInterrupt" in output, output
    assert_nothing_left(leftovers, run_id)
