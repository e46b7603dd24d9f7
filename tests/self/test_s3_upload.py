"""The report upload against the testbed's real MinIO: bucket creation, keys, latest.json, failures."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from k8s_gpu_acceptance.s3 import upload_reports
from k8s_gpu_acceptance.settings import Settings

WHEN = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.timezone.utc)
S3_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture
def s3_env(testbed: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process talks to the testbed's MinIO with the testbed's credentials (and nothing else)."""
    env = testbed.env
    for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    for var in S3_VARS:
        monkeypatch.setenv(var, env[var])
    return {var: env[var] for var in S3_VARS}


def admin_client(s3_env: dict[str, str]) -> Any:
    """A client with the testbed's credentials passed explicitly, whatever a test did to the env."""
    return boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        region_name=s3_env["AWS_DEFAULT_REGION"],
    )


@pytest.fixture
def bucket(s3_env: dict[str, str]) -> Iterator[str]:
    """A fresh bucket name (not created: the upload must create it); emptied and removed afterwards."""
    name = f"gpu-acc-selftest-{uuid.uuid4().hex[:10]}"
    yield name
    client = admin_client(s3_env)
    try:
        for item in client.list_objects_v2(Bucket=name).get("Contents", []):
            client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)
    except client.exceptions.NoSuchBucket:
        pass


@pytest.fixture
def reports(tmp_path: Path) -> list[Path]:
    files = {
        "report.html": "<!DOCTYPE html><html><body><h1>GPU acceptance</h1></body></html>",
        "report.json": json.dumps(
            {
                "schema": "k8s-gpu-acceptance/report",
                "schema_version": "1.0",
                "run_id": "run-a",
                "outcome": "passed",
            }
        ),
        "junit.xml": '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="p"/></testsuites>',
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return [tmp_path / name for name in files]


def snapshot(files: list[Path]) -> list[tuple[str, bytes, int]]:
    return [(str(p), p.read_bytes(), p.stat().st_mtime_ns) for p in files]


def test_upload_creates_the_bucket_and_the_keys_and_moves_latest(s3_env, bucket, reports):
    settings = Settings(s3_endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"], s3_bucket=bucket, s3_prefix="nightly")
    before = snapshot(reports)
    first = upload_reports(reports[0].parent, reports, settings, "run-a", WHEN, outcome="passed")
    assert first.ok, first.error
    assert first.created_bucket
    assert first.keys == (
        "nightly/2026-11-22/run-a/report.html",
        "nightly/2026-11-22/run-a/report.json",
        "nightly/2026-11-22/run-a/junit.xml",
    )
    client = admin_client(s3_env)
    for key, ctype, path in zip(
        first.keys, ("text/html", "application/json", "application/xml"), reports, strict=True
    ):
        obj = client.get_object(Bucket=bucket, Key=key)
        assert obj["ContentType"].startswith(ctype)
        assert obj["Body"].read() == path.read_bytes()
    latest = json.loads(client.get_object(Bucket=bucket, Key="nightly/latest.json")["Body"].read())
    assert latest["run_id"] == "run-a" and latest["outcome"] == "passed" and latest["date"] == "2026-11-22"
    assert latest["keys"]["report.json"] == "nightly/2026-11-22/run-a/report.json"

    second = upload_reports(
        reports[0].parent, reports, settings, "run-b", WHEN + dt.timedelta(days=1), outcome="passed"
    )
    assert second.ok, second.error
    assert not second.created_bucket  # exists now
    latest = json.loads(client.get_object(Bucket=bucket, Key="nightly/latest.json")["Body"].read())
    assert (
        latest["run_id"] == "run-b"
        and latest["keys"]["report.html"] == "nightly/2026-11-23/run-b/report.html"
    )
    listed = sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert len(listed) == 7  # 2 runs x 3 files + latest.json
    assert snapshot(reports) == before


def test_wrong_credentials_give_a_clear_line_without_the_secret(s3_env, bucket, reports, monkeypatch):
    wrong_secret = "Wrong/Secret+Key/" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    settings = Settings(s3_endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"], s3_bucket=bucket)
    result = upload_reports(reports[0].parent, reports, settings, "run-a", WHEN, outcome="passed")
    assert not result.ok
    assert "wrong S3 credentials" in result.error and "AWS_SECRET_ACCESS_KEY" in result.error
    assert wrong_secret not in result.error and s3_env["AWS_SECRET_ACCESS_KEY"] not in result.error

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOSUCHKEY" + uuid.uuid4().hex[:8].upper())
    result = upload_reports(reports[0].parent, reports, settings, "run-a", WHEN, outcome="passed")
    assert not result.ok and "InvalidAccessKeyId" in result.error and "AWS_ACCESS_KEY_ID" in result.error
    assert wrong_secret not in result.error
    assert bucket not in [b["Name"] for b in admin_client(s3_env).list_buckets()["Buckets"]]


def test_wrong_endpoint_fails_fast_and_leaves_the_files(s3_env, bucket, reports):
    before = snapshot(reports)
    started = time.monotonic()
    settings = Settings(s3_endpoint_url="http://127.0.0.1:9", s3_bucket=bucket)
    result = upload_reports(reports[0].parent, reports, settings, "run-a", WHEN, outcome="passed")
    elapsed = time.monotonic() - started
    assert not result.ok and result.error.startswith("cannot connect to S3 endpoint http://127.0.0.1:9")
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in result.error
    assert elapsed < 20, f"{elapsed:.1f}s"
    assert snapshot(reports) == before
