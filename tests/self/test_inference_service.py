"""The GPT-2 service (examples/inference/server.py) for real on this machine, and its load test against it.

No cluster: the service runs as a process here (CPU, the built-in tiny model), the load test sends real HTTP
requests at 1/2/4 concurrent clients. Its Deployment on the testbed's real node is issue 14's next step.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "inference"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    """The service on a free port, ready (GET /healthz answers) within 120 s; stopped afterwards."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "container"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "server.py"),
            "--model",
            "tiny-random-gpt2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                    assert json.loads(r.read())["ok"] is True
                break
            except OSError:
                if proc.poll() is not None:
                    output = proc.stdout.read()[-2000:] if proc.stdout else ""
                    pytest.fail(f"the service exited {proc.returncode}: {output}")
                if time.monotonic() > deadline:
                    pytest.fail("the service did not answer /healthz within 120 s")
                time.sleep(0.5)  # a process start: nothing to watch but the port
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + "/generate", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_generate_answers_with_the_requested_tokens(service):
    status, answer = post(
        service, json.dumps({"prompt": "Explain what an LLM is", "max_new_tokens": 8}).encode()
    )
    assert status == 200
    assert answer["new_tokens"] == 8 and answer["device"] == "cpu" and answer["model"] == "tiny-random-gpt2"
    assert answer["generate_ms"] > 0


def test_bad_requests_get_400_with_the_expected_shape(service):
    status, answer = post(service, b'{"text": "no prompt"}')
    assert status == 400 and "expected {'prompt': str" in answer["error"]
    status, answer = post(service, json.dumps({"prompt": "x", "max_new_tokens": 100000}).encode())
    assert status == 400 and "max_new_tokens must be" in answer["error"]


def test_the_load_test_sweeps_concurrency_without_errors(service, tmp_path):
    out = tmp_path / "levels.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "loadtest.py"),
            service,
            "--levels",
            "1,2,4",
            "--requests-per-client",
            "3",
            "--new-tokens",
            "8",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    levels = json.loads(out.read_text())
    assert [lv["concurrency"] for lv in levels] == [1, 2, 4]
    for lv in levels:
        assert lv["ok"] == lv["requests"] == 3 * lv["concurrency"] and lv["errors"] == {}
        assert lv["p50_ms"] <= lv["p95_ms"] <= lv["p99_ms"] and lv["tokens_per_s"] > 0
    # One model behind a lock: four clients queue, so their p50 is not below one client's.
    assert levels[2]["p50_ms"] >= levels[0]["p50_ms"]
    print(proc.stdout)
