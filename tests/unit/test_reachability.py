"""Classifying an unreachable API server from real sockets and the real kubernetes client (no cluster)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import urllib3
from kubernetes import client

from k8s_gpu_acceptance import reachability
from k8s_gpu_acceptance.diagnosis import diagnose_unreachable
from tests.servers import black_hole_address, refused_address


@pytest.fixture
def refused_server() -> str:
    return refused_address()


@pytest.fixture
def black_hole_server() -> Iterator[str]:
    with black_hole_address() as address:
        yield address


def api_client(server: str) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = server
    configuration.verify_ssl = False
    configuration.retries = urllib3.util.Retry(total=0)
    return client.ApiClient(configuration)


def test_refused_is_named_in_milliseconds(refused_server):
    started = time.monotonic()
    found = reachability.check(api_client(refused_server), refused_server)
    assert found is not None and found.kind == "refused", found
    assert "nothing listens" in found.seen
    assert time.monotonic() - started < 1.0


def test_black_hole_is_named_after_exactly_the_connect_timeout(black_hole_server):
    started = time.monotonic()
    found = reachability.check(api_client(black_hole_server), black_hole_server, connect_timeout_s=1.0)
    elapsed = time.monotonic() - started
    assert found is not None and found.kind == "timeout", found
    assert "within the 1 s connect timeout" in found.seen
    assert 0.9 <= elapsed < 2.0, elapsed


def test_unresolvable_name():
    server = "https://no-such-api.invalid:6443"
    found = reachability.check(api_client(server), server)
    assert found is not None and found.kind == "dns" and "'no-such-api.invalid'" in found.seen


def test_classify_reads_through_the_clients_exception_chain(refused_server, black_hole_server):
    """What the suite's other API calls raise (MaxRetryError wrapping the socket error) classifies too."""
    for server, kind in ((refused_server, "refused"), (black_hole_server, "timeout")):
        with pytest.raises(Exception) as caught:
            client.VersionApi(api_client(server)).get_code(_request_timeout=(1, 1))
        assert reachability.classify(caught.value, server, 1).kind == kind


def test_tls_and_http_answers_are_not_confused_with_unreachable():
    """A plain-HTTP listener on the https URL: the TCP connect works, TLS does not."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    server = f"https://127.0.0.1:{listener.getsockname()[1]}"
    try:

        def answer() -> None:
            for _ in range(2):  # the TCP check's connection, then the client's
                conn, _ = listener.accept()
                if conn.recv(1024):
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                conn.close()

        worker = threading.Thread(target=answer, daemon=True)
        worker.start()
        found = reachability.check(api_client(server), server, connect_timeout_s=2)
    finally:
        listener.close()
    assert found is not None and found.kind in ("tls", "reset"), found


def test_every_kind_has_a_cause_and_a_fix():
    kinds = {
        "refused",
        "timeout",
        "dns",
        "no-route",
        "reset",
        "tls",
        "read-timeout",
        "unauthorized",
        "forbidden",
    }
    for kind in kinds:
        diagnosis = diagnose_unreachable(f"seen {kind}", kind)
        assert diagnosis.cause and diagnosis.fix and diagnosis.rule == f"api-{kind}"
        assert diagnosis.cause != diagnose_unreachable("x").cause  # its own, not the generic one


def test_http_status_classification():
    exc = client.ApiException(status=403, reason="Forbidden")
    assert reachability.classify(exc, "https://x").kind == "forbidden"
    unauthorized = client.ApiException(status=401, reason="Unauthorized")
    assert reachability.classify(unauthorized, "https://x").kind == "unauthorized"
