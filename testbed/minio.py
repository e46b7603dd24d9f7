"""A real MinIO server on 127.0.0.1, with its own random credentials and a data dir in a temporary folder."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from testbed.errors import TestbedError
from testbed.state import Proc, free_port, is_alive, start, write_private


def new_credentials(path: Path) -> dict[str, str]:
    """Random credentials, stored 0600: nothing else uses them, so nothing can leak into the suite."""
    creds = {"access_key": "tb" + secrets.token_hex(9), "secret_key": secrets.token_urlsafe(30)}
    write_private(path, json.dumps(creds) + "\n")
    return creds


def start_minio(binary: Path, state: Path, region: str) -> tuple[Proc, str, str, Path]:
    """Start MinIO; returns the process, the endpoint URL, the credentials file and the data dir."""
    creds_file = state / "s3-credentials.json"
    creds = new_credentials(creds_file)
    data_dir = Path(tempfile.mkdtemp(prefix="k8s-gpu-acceptance-minio-"))
    port, console_port = free_port(), free_port()
    env = dict(os.environ)
    env.update(
        {
            "MINIO_ROOT_USER": creds["access_key"],
            "MINIO_ROOT_PASSWORD": creds["secret_key"],
            "MINIO_SITE_REGION": region,
            "MINIO_BROWSER": "off",  # no web console: the suite only talks S3
            "MINIO_UPDATE": "off",  # never look for a newer release (no downloads at run time)
            "MINIO_CALLHOME_ENABLE": "off",
        }
    )
    args = [
        str(binary),
        "server",
        "--quiet",
        "--address",
        f"127.0.0.1:{port}",
        "--console-address",
        f"127.0.0.1:{console_port}",
        "--certs-dir",
        str(state / "minio-certs"),
        str(data_dir),
    ]
    proc = start(args, state / "logs" / "minio.log", env=env)
    return proc, f"http://127.0.0.1:{port}", str(creds_file), data_dir


def wait_minio(proc: Proc, endpoint: str, timeout: float = 60.0) -> None:
    """Ready when /minio/health/ready answers 200; a process that died is reported with its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(proc):
            raise TestbedError(f"MinIO exited during start-up; its log ({proc.log}):\n{tail(Path(proc.log))}")
        if minio_ready(endpoint):
            return
        time.sleep(0.2)
    raise TestbedError(
        f"MinIO not ready at {endpoint} after {timeout:.0f}s; log {proc.log}:\n{tail(Path(proc.log))}"
    )


def minio_ready(endpoint: str) -> bool:
    """MinIO's unauthenticated readiness probe."""
    try:
        with urllib.request.urlopen(f"{endpoint}/minio/health/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def tail(path: Path, lines: int = 30) -> str:
    """The end of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
