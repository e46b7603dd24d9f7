"""An API server that cannot be reached: the whole suite (-m gpu: layers, sharing, isolation, exhaustion) is
blocked by the cluster layer's one failure, with its cause and fix, and no traceback anywhere.

Needs no testbed: the servers are a closed port (refused) and a listener whose accept queue is full (Linux
then drops further SYNs, as a firewall DROP does: a black hole), both on this machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import black_hole_address, refused_address

REPO = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT_S = 5.0  # k8s_gpu_acceptance.reachability.CONNECT_TIMEOUT_S, stated in the README


def kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "unreachable.kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: gone\n"
        f"clusters: [{{name: gone, cluster: {{server: '{server}', insecure-skip-tls-verify: true}}}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: gone, context: {cluster: gone, user: u}}]\n"
    )
    return path


def run_whole_suite(tmp_path: Path, server: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    report_dir = tmp_path / "reports"
    command = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--rootdir={REPO}",
        "-c", str(REPO / "pytest.ini"), str(REPO / "tests" / "gpu"), "-m", "gpu",
        f"--report-dir={report_dir}", f"--kubeconfig={kubeconfig(tmp_path, server)}", "--target=k8s",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False)
    return done, json.loads((report_dir / "report.json").read_text())


@pytest.fixture
def refused() -> str:
    return refused_address()


@pytest.fixture
def black_hole() -> Iterator[str]:
    with black_hole_address() as address:
        yield address


def assert_blocked_cleanly(done: subprocess.CompletedProcess[str], report: dict, seen: str) -> dict:
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    for marker in ("Traceback", "MaxRetryError", "urllib3", "NewConnectionError", "ConnectTimeoutError"):
        assert marker not in output, f"{marker!r} in the output:\n{output}"
    layers = {entry["name"]: entry for entry in report["layers"]}
    cluster = layers["cluster"]
    assert cluster["outcome"] == "failed" and seen in cluster["diagnosis"]["seen"], cluster
    assert cluster["diagnosis"]["cause"] and cluster["diagnosis"]["fix"]
    for name, entry in layers.items():
        if name != "cluster":
            assert (entry["outcome"], entry["blocked_by"]) == ("blocked", "cluster"), entry
    # sharing, isolation, exhaustion: not layers, but every one of them is blocked by the same failure
    summary = output.splitlines()[-1]
    assert "error" not in summary and "1 failed" in summary, summary
    assert output.count("BLOCKED by cluster") >= 1
    return cluster


def test_refused_connection_blocks_everything_in_seconds(tmp_path, refused):
    done, report = run_whole_suite(tmp_path, refused)
    cluster = assert_blocked_cleanly(done, report, "refused: nothing listens")
    assert cluster["duration_s"] < 5, cluster  # the bound: a refused connection named in under 5 s


def test_black_holed_address_is_named_after_the_connect_timeout(tmp_path, black_hole):
    done, report = run_whole_suite(tmp_path, black_hole)
    cluster = assert_blocked_cleanly(done, report, f"within the {CONNECT_TIMEOUT_S:g} s connect timeout")
    assert CONNECT_TIMEOUT_S <= cluster["duration_s"] < CONNECT_TIMEOUT_S + 3, cluster
