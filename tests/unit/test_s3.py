"""The S3 upload: key layout, error lines (cause + fix, no secret), the stubbed flow, a real dead endpoint."""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from pathlib import Path

import pytest
from botocore import exceptions as bexc
from botocore.stub import ANY, Stubber

from k8s_gpu_acceptance import s3
from k8s_gpu_acceptance.s3 import (
    content_type,
    describe_error,
    ensure_bucket,
    latest_key,
    make_client,
    run_prefix,
    upload_reports,
)
from k8s_gpu_acceptance.settings import Settings

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYPLANTEDKEY"
KEY_ID = "AKIAPLANTEDKEYID0002"
WHEN = dt.datetime(2026, 11, 22, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))  # 04:30 UTC next day
ENDPOINT = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def _credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def reports(tmp_path) -> list[Path]:
    files = {
        "report.html": "<html><body>ok</body></html>",
        "report.json": json.dumps({"schema": "k8s-gpu-acceptance/report", "outcome": "failed"}),
        "junit.xml": "<testsuites/>",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return [tmp_path / name for name in files]


def client_error(code: str, status: int, message: str = "", operation: str = "PutObject") -> bexc.ClientError:
    return bexc.ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )


def test_key_layout_uses_the_utc_date_and_a_safe_run_id():
    assert (
        run_prefix("k8s-gpu-acceptance", "20261122-233000-a1b2c3", WHEN)
        == "k8s-gpu-acceptance/2026-11-23/20261122-233000-a1b2c3/"
    )
    assert run_prefix("/a/b/", "weird id/..", dt.datetime(2026, 1, 2)) == "a/b/2026-01-02/weird-id-../"
    assert run_prefix("", "r1", WHEN) == "2026-11-23/r1/"
    assert latest_key("k8s-gpu-acceptance") == "k8s-gpu-acceptance/latest.json"
    assert latest_key("") == "latest.json"


def test_content_types():
    assert content_type(Path("report.html")) == "text/html; charset=utf-8"
    assert content_type(Path("report.json")) == "application/json"
    assert content_type(Path("junit.xml")) == "application/xml"
    assert content_type(Path("x.bin")) == "application/octet-stream"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            client_error("InvalidAccessKeyId", 403),
            "wrong S3 credentials: http://127.0.0.1:9 does not know this access",
        ),
        (client_error("SignatureDoesNotMatch", 403), "check AWS_SECRET_ACCESS_KEY"),
        (client_error("AccessDenied", 403), "access denied for upload on bucket 'reports'"),
        (
            client_error("403", 403, operation="HeadBucket"),
            "(AccessDenied): grant this identity s3:PutObject",
        ),
        (client_error("NoSuchBucket", 404), "bucket 'reports' does not exist"),
        (client_error("BucketAlreadyExists", 409), "taken by another account"),
        (client_error("ExpiredToken", 400), "refresh the credentials"),
        (client_error("PermanentRedirect", 301), "set AWS_DEFAULT_REGION"),
        (
            client_error("SlowDown", 503, "Please reduce your request rate."),
            "at http://127.0.0.1:9 failed (SlowDown: Please reduce your request rate.)",
        ),
        (
            bexc.NoCredentialsError(),
            "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ),
        (
            bexc.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
            "(AWS_SECRET_ACCESS_KEY is missing)",
        ),
        (
            bexc.EndpointConnectionError(endpoint_url=ENDPOINT, error="[Errno 111] Connection refused"),
            "cannot connect to S3 endpoint http://127.0.0.1:9 (connection refused or unreachable)",
        ),
        (
            bexc.EndpointConnectionError(
                endpoint_url="http://minio.nope:9000", error="[Errno -2] Name or service not known"
            ),
            "cannot resolve the S3 endpoint host of http://127.0.0.1:9 (DNS)",
        ),
        (
            bexc.ConnectTimeoutError(endpoint_url=ENDPOINT, error="timed out"),
            "did not answer within 3s connect",
        ),
        (bexc.SSLError(endpoint_url=ENDPOINT, error="certificate verify failed"), "AWS_CA_BUNDLE"),
    ],
)
def test_error_lines_name_the_cause_and_the_fix(exc, expected):
    line = describe_error(exc, endpoint=ENDPOINT, bucket="reports")
    assert expected in line
    assert "\n" not in line


def test_error_lines_never_carry_credentials():
    exc = client_error(
        "Weird", 400, f"The request signature for {KEY_ID} with key {SECRET} was odd\nsecond line"
    )
    line = describe_error(exc, endpoint="http://user:hunter22@minio:9000", bucket="reports")
    assert SECRET not in line and KEY_ID not in line and "hunter22" not in line
    assert "\n" not in line and "minio:9000" in line


def test_no_bucket_means_no_upload(reports):
    result = upload_reports(reports[0].parent, reports, Settings(), "r1", WHEN, outcome="failed")
    assert not result.ok and "no bucket set (--s3-bucket" in result.error


def stubbed(monkeypatch) -> Stubber:
    client = make_client(Settings(s3_endpoint_url=ENDPOINT, s3_bucket="reports"))
    stub = Stubber(client)
    monkeypatch.setattr(s3, "make_client", lambda settings: client)
    return stub


def test_ensure_bucket_creates_a_missing_bucket_and_tolerates_a_race(monkeypatch):
    stub = stubbed(monkeypatch)
    stub.add_client_error("head_bucket", "404", http_status_code=404)
    stub.add_response("create_bucket", {}, {"Bucket": "reports"})
    stub.add_client_error("head_bucket", "404", http_status_code=404)
    stub.add_client_error("create_bucket", "BucketAlreadyOwnedByYou", http_status_code=409)
    stub.add_client_error("head_bucket", "403", http_status_code=403)  # upload-only identity: go on
    with stub:
        client = s3.make_client(Settings())
        assert ensure_bucket(client, "reports") is True
        assert ensure_bucket(client, "reports") is False
        assert ensure_bucket(client, "reports") is False
    stub.assert_no_pending_responses()


def test_ensure_bucket_sends_the_location_constraint_outside_us_east_1(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    client = make_client(Settings())
    stub = Stubber(client)
    stub.add_client_error("head_bucket", "404", http_status_code=404)
    stub.add_response(
        "create_bucket",
        {},
        {"Bucket": "reports", "CreateBucketConfiguration": {"LocationConstraint": "eu-central-1"}},
    )
    with stub:
        assert ensure_bucket(client, "reports") is True


class LatestSays:
    """Matches a latest.json body whose outcome is the one given (compared by the Stubber)."""

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome

    def __eq__(self, body: object) -> bool:
        return isinstance(body, bytes) and json.loads(body)["outcome"] == self.outcome

    def __repr__(self) -> str:
        return f"<latest.json body with outcome {self.outcome!r}>"


def test_upload_puts_each_file_with_its_content_type_then_latest(monkeypatch, reports):
    """latest.json carries the outcome the caller gives (report.json on disk says "failed": not read)."""
    stub = stubbed(monkeypatch)
    stub.add_response("head_bucket", {}, {"Bucket": "reports"})
    prefix = "k8s-gpu-acceptance/2026-11-23/run-1/"
    for path, ctype in zip(
        reports, ("text/html; charset=utf-8", "application/json", "application/xml"), strict=True
    ):
        stub.add_response(
            "put_object",
            {},
            {"Bucket": "reports", "Key": prefix + path.name, "Body": ANY, "ContentType": ctype},
        )
    stub.add_response(
        "put_object",
        {},
        {
            "Bucket": "reports",
            "Key": "k8s-gpu-acceptance/latest.json",
            "Body": LatestSays("passed"),
            "ContentType": "application/json",
            "CacheControl": "no-cache",
        },
    )
    settings = Settings(s3_endpoint_url=ENDPOINT, s3_bucket="reports")
    with stub:
        result = upload_reports(
            reports[0].parent, [Path(p.name) for p in reports], settings, "run-1", WHEN, outcome="passed"
        )
    stub.assert_no_pending_responses()
    assert result.ok, result.error
    assert result.location == f"s3://reports/{prefix}"
    assert result.keys == tuple(prefix + p.name for p in reports)
    assert result.latest_key == "k8s-gpu-acceptance/latest.json"
    assert result.line() == f"uploaded 3 files to s3://reports/{prefix}"


def test_latest_document_points_at_the_run():
    doc = s3.latest_document(
        "reports", "run-1", WHEN, {"report.json": "p/2026-11-23/run-1/report.json"}, "failed"
    )
    assert doc["schema"] == "k8s-gpu-acceptance/latest" and doc["date"] == "2026-11-23"
    assert doc["outcome"] == "failed" and doc["urls"] == {
        "report.json": "s3://reports/p/2026-11-23/run-1/report.json"
    }


def test_a_missing_file_is_reported_and_latest_is_not_moved(monkeypatch, reports):
    stub = stubbed(monkeypatch)
    stub.add_response("head_bucket", {}, {"Bucket": "reports"})
    stub.add_response("put_object", {}, {"Bucket": "reports", "Key": ANY, "Body": ANY, "ContentType": ANY})
    settings = Settings(s3_endpoint_url=ENDPOINT, s3_bucket="reports")
    with stub:
        result = upload_reports(
            reports[0].parent,
            [reports[0], reports[0].parent / "junit-missing.xml"],
            settings,
            "run-1",
            WHEN,
            outcome="failed",
        )
    stub.assert_no_pending_responses()  # no latest.json put
    assert not result.ok and "junit-missing.xml" in result.error and result.latest_key is None
    assert len(result.keys) == 1


def test_access_denied_on_put_is_one_clear_line(monkeypatch, reports):
    stub = stubbed(monkeypatch)
    stub.add_client_error("head_bucket", "403", http_status_code=403)
    stub.add_client_error("put_object", "AccessDenied", "Access Denied.", http_status_code=403)
    with stub:
        result = upload_reports(
            reports[0].parent,
            reports,
            Settings(s3_endpoint_url=ENDPOINT, s3_bucket="reports"),
            "run-1",
            WHEN,
            outcome="failed",
        )
    assert not result.ok
    assert "access denied for PutObject k8s-gpu-acceptance/2026-11-23/run-1/report.html" in result.error


def snapshot(files: list[Path]) -> list[tuple[str, bytes, int]]:
    return [(str(p), p.read_bytes(), p.stat().st_mtime_ns) for p in files]


def test_a_real_unreachable_endpoint_fails_fast_with_a_clear_line(reports):
    with socket.socket() as probe:  # port 9 (discard) must really refuse on this host
        assert probe.connect_ex(("127.0.0.1", 9)) != 0
    before = snapshot(reports)
    started = time.monotonic()
    result = upload_reports(
        reports[0].parent,
        reports,
        Settings(s3_endpoint_url=ENDPOINT, s3_bucket="reports"),
        "run-1",
        WHEN,
        outcome="failed",
    )
    elapsed = time.monotonic() - started
    assert not result.ok
    assert result.error.startswith("cannot connect to S3 endpoint http://127.0.0.1:9 (connection refused")
    assert "AWS_ENDPOINT_URL_S3" in result.error
    assert SECRET not in result.error and KEY_ID not in result.error
    assert elapsed < 20, f"took {elapsed:.1f}s"  # measured ~1 s; generous for loaded CI machines
    assert snapshot(reports) == before
    assert sorted(p.name for p in reports[0].parent.iterdir()) == ["junit.xml", "report.html", "report.json"]


def test_missing_credentials_are_named(monkeypatch, reports, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    result = upload_reports(
        reports[0].parent,
        reports,
        Settings(s3_endpoint_url=ENDPOINT, s3_bucket="reports"),
        "run-1",
        WHEN,
        outcome="failed",
    )
    assert not result.ok and result.error.startswith("no S3 credentials found")


def test_an_endpoint_from_aws_endpoint_url_s3_is_used_and_named(monkeypatch, reports):
    """Settings built without an endpoint: boto3 resolves AWS_ENDPOINT_URL_S3, and the error names it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", ENDPOINT)
    result = upload_reports(
        reports[0].parent, reports, Settings(s3_bucket="reports"), "run-1", WHEN, outcome="failed"
    )
    assert not result.ok
    assert result.error.startswith("cannot connect to S3 endpoint http://127.0.0.1:9 (connection refused")
