"""Fixtures giving the self-tests the live testbed (started if needed, through the same code as `up`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from suiterun import DEFAULT_MARKERS, SuiteRun, assert_nothing_left, suite_command

from testbed import lifecycle
from testbed.cluster import wait_for
from testbed.errors import TestbedError

RUN_ID = uuid.uuid4().hex[:8]
LABELS = {"app.kubernetes.io/managed-by": "k8s-gpu-acceptance", "k8s-gpu-acceptance/run-id": RUN_ID}


@pytest.fixture(scope="session")
def testbed() -> Iterator[lifecycle.Testbed]:
    """The running testbed. One this session started is stopped at the end (unless TESTBED_KEEP=1);
    one that was already running (e.g. from `make test`) is left as found."""
    try:
        running = lifecycle.up()
    except TestbedError as exc:
        pytest.fail(f"testbed: {exc}", pytrace=False)
    yield running
    if running.started_here and os.environ.get("TESTBED_KEEP") != "1":
        lifecycle.down()


@pytest.fixture(scope="session")
def testbed_api(testbed: lifecycle.Testbed) -> Iterator[client.ApiClient]:
    """A Kubernetes client for the testbed (never the user's default kubeconfig)."""
    with config.new_client_from_config(config_file=str(testbed.kubeconfig)) as api_client:
        yield api_client


@pytest.fixture(scope="session")
def core(testbed_api: client.ApiClient) -> client.CoreV1Api:
    """The core/v1 API of the testbed, for tests that check what a run left on the cluster."""
    return client.CoreV1Api(testbed_api)


@pytest.fixture(scope="session")
def leftovers(core: client.CoreV1Api, testbed_api: client.ApiClient) -> Callable[..., list[str]]:
    """Lists the namespaces, pods, ConfigMaps, ResourceClaimTemplates (--allocation dra), Services and
    Deployments (the serving check) matching a label selector: what a run left behind.

    The suite waits until its pods are gone, not its namespaces (kube-controller-manager removes a deleted
    namespace after a fixed 5 s): namespaces already terminating get 30 s to go before anything is counted,
    so one that never goes is still reported."""
    resource = client.ResourceV1Api(testbed_api)
    apps = client.AppsV1Api(testbed_api)

    def find(selector: str, run_id_prefix: str = "") -> list[str]:
        def ours(obj: Any) -> bool:
            return (obj.metadata.labels or {}).get("k8s-gpu-acceptance/run-id", "").startswith(run_id_prefix)

        def none_terminating(listed: Any) -> bool:
            return not any(ours(n) and n.metadata.deletion_timestamp for n in listed.items)

        with contextlib.suppress(TestbedError):  # still there: listed below, and the test fails on them
            wait_for(
                core.list_namespace, none_terminating, "terminating namespaces", 30, label_selector=selector
            )
        listers = [
            ("namespace", core.list_namespace),
            ("pod", core.list_pod_for_all_namespaces),
            ("configmap", core.list_config_map_for_all_namespaces),
            ("resourceclaimtemplate", resource.list_resource_claim_template_for_all_namespaces),
            ("service", core.list_service_for_all_namespaces),
            ("deployment", apps.list_deployment_for_all_namespaces),
        ]
        left = [
            f"{kind}/{obj.metadata.name}"
            if kind == "namespace"
            else f"{kind}/{obj.metadata.namespace}/{obj.metadata.name}"
            for kind, lister in listers
            for obj in lister(label_selector=selector).items
            if ours(obj)
        ]
        return left

    return find


@pytest.fixture
def testbed_namespace(request: pytest.FixtureRequest, testbed_api: client.ApiClient) -> Iterator[str]:
    """A labelled namespace per test, with its default ServiceAccount (pods need it), deleted afterwards."""
    core = client.CoreV1Api(testbed_api)
    slug = request.node.name.lower().replace("_", "-")[:30].strip("-")
    name = f"tb-{slug}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": name, "labels": {**LABELS, "k8s-gpu-acceptance/test": slug}}})
    try:
        wait_for(
            core.list_namespaced_service_account,
            lambda sl: bool(sl.items),
            f"ServiceAccount {name}/default",
            60,
            namespace=name,
            field_selector="metadata.name=default",
        )
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture
def run_suite(
    testbed: lifecycle.Testbed, tmp_path: Path, leftovers: Callable[..., list[str]]
) -> Iterator[Callable[..., SuiteRun]]:
    """Run the suite against the testbed; afterwards prove the run left nothing behind."""
    runs: list[SuiteRun] = []

    def run(
        *args: str,
        kubeconfig: Path | None = None,
        env: dict[str, str] | None = None,
        markers: str = DEFAULT_MARKERS,
        run_id: str | None = None,
    ) -> SuiteRun:
        run_id = run_id or f"selftest-{uuid.uuid4().hex[:8]}"
        report_dir = tmp_path / f"reports-{len(runs)}"
        environ = {**os.environ, **testbed.env, "GPU_ACCEPTANCE_RUN_ID": run_id, **(env or {})}
        # relative to the run's cwd, as users pass it (the default is the relative "reports")
        relative = report_dir.relative_to(tmp_path)
        command = suite_command(
            relative, f"--kubeconfig={kubeconfig or testbed.kubeconfig}", *args, markers=markers
        )
        started = time.monotonic()
        result = subprocess.run(
            command, capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=300, check=False
        )
        output = result.stdout + result.stderr
        suite_run = SuiteRun(result.returncode, output, run_id, report_dir, time.monotonic() - started)
        runs.append(suite_run)
        return suite_run

    yield run
    for suite_run in runs:
        assert_nothing_left(leftovers, suite_run.run_id)


@pytest.fixture
def testbed_s3(testbed: lifecycle.Testbed) -> Any:
    """An S3 client for the testbed's MinIO with its credentials passed explicitly (not from the env)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=testbed.env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=testbed.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=testbed.env["AWS_SECRET_ACCESS_KEY"],
        region_name=testbed.env["AWS_DEFAULT_REGION"],
    )


@pytest.fixture
def fresh_bucket(testbed_s3: Any) -> Iterator[str]:
    """A bucket name nobody used (not created: the suite's upload creates it); emptied and removed after."""
    name = f"selftest-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        for page in testbed_s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                testbed_s3.delete_object(Bucket=name, Key=item["Key"])
        testbed_s3.delete_bucket(Bucket=name)
    except testbed_s3.exceptions.NoSuchBucket:
        pass


METAFLOW_RESULTS_KEY = "gpu-inference-demo/gpu_inference_results.json"  # the flow's default --results-url
S3_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture
def metaflow_env(testbed: lifecycle.Testbed, testbed_s3: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Metaflow on the testbed's MinIO: bucket `metaflow`, a datastore root of this test's own, no cluster
    (KUBECONFIG=/nonexistent). The datastore root and the results object are removed afterwards."""
    with contextlib.suppress(
        testbed_s3.exceptions.BucketAlreadyOwnedByYou, testbed_s3.exceptions.BucketAlreadyExists
    ):
        testbed_s3.create_bucket(Bucket="metaflow")
    root = f"selftest-{uuid.uuid4().hex[:8]}"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "METAFLOW_")) and k != "KUBECONFIG"
    }
    env.update({var: testbed.env[var] for var in S3_VARS})
    env.update(
        USERNAME="selftest",
        KUBECONFIG="/nonexistent",  # a local run must not reach any cluster
        METAFLOW_HOME=str(tmp_path / "metaflow-home"),
        METAFLOW_DEFAULT_DATASTORE="s3",
        METAFLOW_DATASTORE_SYSROOT_S3=f"s3://metaflow/{root}",
        METAFLOW_S3_ENDPOINT_URL=testbed.env["AWS_ENDPOINT_URL_S3"],
    )
    yield env
    for prefix in (root + "/", METAFLOW_RESULTS_KEY):
        for item in testbed_s3.list_objects_v2(Bucket="metaflow", Prefix=prefix).get("Contents", []):
            testbed_s3.delete_object(Bucket="metaflow", Key=item["Key"])
