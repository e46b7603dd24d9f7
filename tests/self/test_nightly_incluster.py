"""The nightly CronJob for real: kustomize-applied to the testbed, its Job runs the suite IN the cluster on
the real node (real kubelet + containerd), with the in-cluster config and the base's RBAC enforced by the real
apiserver; the suite creates its probe pod there and uploads the reports to the testbed's MinIO.

The runner image here is built from this host (the testbed has no registry and this machine no Docker): the
host's python3 with its stdlib (testbed.images, as the probe image), plus the suite and its locked runtime
dependencies installed with uv into one directory. deploy/runner/Dockerfile is the image users build; it
holds the same things. On this CPU machine the probe pod's driver layer fails for the real reason (no
/dev/nvidia*), so the Job ends with exit status 1: the point here is the in-cluster path and the reports.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from suiterun import pod_log

from testbed import images
from testbed.versions import cache_root

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "gpu-acceptance"
CRONJOB = "gpu-acceptance-nightly"
SUITE_FILES = (
    "pyproject.toml",
    "README.md",
    "conftest.py",
    "pytest.ini",
    "tests/gpu",
    "manifests/probe-pod.yaml",
)


def runner_stage(root: Path) -> Path:
    """<root>/site (the suite and its runtime dependencies, for the host's python3) and <root>/suite (the
    files pytest reads: pytest.ini, conftest.py, tests/gpu). Built each time (uv's cache: seconds)."""
    (root / "suite" / "tests").mkdir(parents=True)
    subprocess.run(
        [str(Path(sys.executable).parent / "uv"), "pip", "install", "--quiet", "--python",
         "/usr/bin/python3", "--target", str(root / "site"),
         "-r", str(REPO / "deploy" / "runner" / "requirements.txt"), str(REPO)],
        check=True, timeout=600,
    )  # fmt: skip
    for name in SUITE_FILES:
        source = REPO / name
        target = root / "suite" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    return root


def node_state() -> dict[str, Any]:
    node: dict[str, Any] = json.loads((cache_root() / "state" / "state.json").read_text())["real_node"]
    return node


def ctr(*args: str) -> subprocess.CompletedProcess[str]:
    node = node_state()
    command = [str(Path(node["bin_dir"]) / "ctr"), "--address", node["containerd_address"], "-n", "k8s.io"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, check=False)


def build_runner_image(stage: Path) -> str:
    """Build the runner image from the host and import it into the real node's containerd; the archive is
    removed once imported (220 MB, and a new one for every change of the suite)."""
    spec = dataclasses.replace(
        images.probe_image_spec(extra_paths=(str(stage),)),
        repository=f"{images.REGISTRY}/suite-runner",
        env=("PATH=/usr/bin:/bin", "LANG=C.UTF-8", f"PYTHONPATH={stage / 'site'}"),
    )
    built = images.build_image(spec, cache_root() / "images")
    try:
        images.import_images(
            Path(node_state()["bin_dir"]) / "ctr", node_state()["containerd_address"], [built]
        )
    finally:
        built.archive.unlink(missing_ok=True)
    return built.name


def kubectl(testbed: Any, *args: str, check: bool = True) -> str:
    """The testbed's own kubectl (the kustomize the users run: `kubectl apply -k`)."""
    binary = Path(node_state()["bin_dir"])
    done = subprocess.run(
        [str(binary / "kubectl"), f"--kubeconfig={testbed.kubeconfig}", *args],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0 or not check, f"kubectl {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def overlay(tmp_path: Path, testbed: Any, server: str, image: str, stage: Path, bucket: str) -> Path:
    """This run's overlay on top of manifests/overlays/testbed: the image, the ports, the bucket."""
    name, _, tag = image.rpartition(":")
    server_port = server.rsplit(":", 1)[-1]
    env = {
        "AWS_ENDPOINT_URL_S3": testbed.env["AWS_ENDPOINT_URL_S3"],
        "AWS_DEFAULT_REGION": testbed.env["AWS_DEFAULT_REGION"],
        "KUBERNETES_SERVICE_PORT": server_port,
        "GPU_ACCEPTANCE_S3_BUCKET": bucket,
        "GPU_ACCEPTANCE_IMAGE": testbed.probe_image,
    }
    patches = [
        {"op": "add", "path": "/spec/jobTemplate/spec/template/spec/containers/0/workingDir",
         "value": str(stage / "suite")},
        *({"op": "add", "path": "/spec/jobTemplate/spec/template/spec/containers/0/env/-",
           "value": {"name": k, "value": v}} for k, v in env.items()),
    ]  # fmt: skip
    directory = tmp_path / "overlay"
    directory.mkdir()
    (directory / "kustomization.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes relative paths only
                "resources": [os.path.relpath(REPO / "manifests" / "overlays" / "testbed", directory)],
                "images": [{"name": "k8s-gpu-acceptance-runner", "newName": name, "newTag": tag}],
                "patches": [{"target": {"kind": "CronJob", "name": CRONJOB}, "patch": json.dumps(patches)}],
            }
        )
    )
    return directory


@pytest.fixture
def stage(testbed: Any) -> Iterator[Path]:
    """The runner's files, under /var/tmp and world-traversable: the runner runs as 10001 and image paths
    keep the host's modes (/root and pytest's /tmp/pytest-of-root are 0700). Removed afterwards."""
    if testbed.real_node is None or testbed.probe_image is None:
        pytest.skip("the testbed runs without its real node (TESTBED_REAL_NODE=0): no kubelet runs pods")
    root = Path(tempfile.mkdtemp(prefix="k8s-gpu-acceptance-runner-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        yield runner_stage(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def runner_image(stage: Path) -> Iterator[str]:
    """The runner image on the real node; removed from its containerd afterwards."""
    started = time.monotonic()
    image = build_runner_image(stage)
    print(f"runner image {image} built and imported in {time.monotonic() - started:.1f}s")
    yield image
    ctr("images", "rm", image)


def test_the_cronjob_runs_the_suite_in_the_cluster_and_reports_reach_minio(
    testbed: Any,
    testbed_api: client.ApiClient,
    testbed_s3: Any,
    fresh_bucket: str,
    stage: Path,
    runner_image: str,
    tmp_path: Path,
    leftovers: Any,
) -> None:
    applied = overlay(tmp_path, testbed, testbed_api.configuration.host, runner_image, stage, fresh_bucket)
    core, batch = client.CoreV1Api(testbed_api), client.BatchV1Api(testbed_api)
    job_name = f"nightly-selftest-{uuid.uuid4().hex[:6]}"
    try:
        kubectl(testbed, "apply", "-k", str(applied))
        core.create_namespaced_secret(
            NAMESPACE,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="gpu-acceptance-s3"),
                string_data={
                    "access-key": testbed.env["AWS_ACCESS_KEY_ID"],
                    "secret-key": testbed.env["AWS_SECRET_ACCESS_KEY"],
                },
            ),
        )
        # `kubectl create job --from=cronjob/...`: a Job from the CronJob's template, owned by it.
        cronjob = batch.read_namespaced_cron_job(CRONJOB, NAMESPACE)
        template = cronjob.spec.job_template
        batch.create_namespaced_job(
            NAMESPACE,
            client.V1Job(
                metadata=client.V1ObjectMeta(
                    name=job_name,
                    labels=template.metadata.labels if template.metadata else None,
                    annotations={"cronjob.kubernetes.io/instantiate": "manual"},
                    owner_references=[
                        client.V1OwnerReference(
                            api_version="batch/v1", kind="CronJob", name=CRONJOB, uid=cronjob.metadata.uid
                        )
                    ],
                ),
                spec=template.spec,
            ),
        )
        finished = None
        for event in watch.Watch().stream(
            batch.list_namespaced_job,
            NAMESPACE,
            field_selector=f"metadata.name={job_name}",
            timeout_seconds=300,
        ):
            status = event["object"].status
            if status.succeeded or status.failed:
                finished = event["object"]
                break
        pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={job_name}").items
        logs = "\n".join(pod_log(core, p.metadata.name, NAMESPACE) for p in pods)
        assert finished is not None, f"the Job did not finish within 300 s; pods: {pods}\n{logs[-3000:]}"
        assert pods and pods[0].spec.node_name == "real-node", logs[-3000:]
        terminated = pods[0].status.container_statuses[0].state.terminated
        # Exit 1: the driver layer fails for real on this CPU machine; anything else is a broken run.
        assert terminated is not None and terminated.exit_code == 1, logs[-5000:]
        assert "gpu-acceptance: uploaded to s3://" in logs, logs[-5000:]

        keys = [
            o["Key"] for o in testbed_s3.list_objects_v2(Bucket=fresh_bucket, Prefix="nightly/")["Contents"]
        ]
        latest = json.loads(
            testbed_s3.get_object(Bucket=fresh_bucket, Key="nightly/latest.json")["Body"].read()
        )
        report = json.loads(
            testbed_s3.get_object(Bucket=fresh_bucket, Key=latest["keys"]["report.json"])["Body"].read()
        )
        for name in ("report.html", "report.json", "junit.xml"):
            assert latest["keys"][name] in keys
        assert any(k.startswith("nightly/history/v1/") and "/runs/" in k for k in keys), keys
        assert report["target"] == "k8s" and report["title"].startswith("GPU acceptance: in-cluster")
        outcomes = {layer["name"]: layer["outcome"] for layer in report["layers"]}
        messages = {layer["name"]: layer["message"][-1500:] for layer in report["layers"]}
        assert {outcomes[n] for n in ("cluster", "device_plugin", "scheduling")} == {"passed"}, messages
        assert outcomes["driver"] == "failed" and report["environment"]["node"] == "real-node"
        assert testbed.env["AWS_SECRET_ACCESS_KEY"] not in logs
        assert not leftovers(f"k8s-gpu-acceptance/run-id={report['run_id']}")
    finally:
        kubectl(testbed, "delete", "-k", str(applied), "--ignore-not-found", "--timeout=120s", check=False)
