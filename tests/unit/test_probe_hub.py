"""The hub reachability check: real sockets on this machine (no route out, a refused port, a black hole, a
listening port, an HTTP proxy), never a mocked socket; and the gpt2 layer failing fast without the hub."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from gpu_probe.core import Context, LayerResult, Options
from gpu_probe.hub import (
    DEFAULT_ENDPOINT,
    HUB_CHECK_TIMEOUT_S,
    BackgroundHubCheck,
    ca_bundle,
    cached_snapshot,
    check_hub,
    hub_cache_dir,
    offline_setting,
    proxy_for,
)
from gpu_probe.layers import gpt2

BLACKHOLE = "https://10.255.255.1"  # private and unrouted (on this machine a transparent proxy answers it)


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A loopback port whose accept queue is full: the kernel drops further SYNs, as a black hole does."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    clients = []
    for _ in range(8):  # fill the backlog until a connect no longer completes
        client = socket.socket()
        client.settimeout(0.3)
        clients.append(client)
        try:
            client.connect(("127.0.0.1", port))
        except OSError:
            break
    else:
        pytest.skip("the accept queue never filled: cannot make a black hole on this kernel")
    yield port
    for client in clients:
        client.close()
    server.close()


@pytest.fixture
def silent() -> Iterator[int]:
    """A listener that accepts connections and never answers (a firewall or proxy that swallows traffic)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def serve(answers: dict[str, bytes]) -> tuple[socket.socket, list[str], threading.Event]:
    """A one-request-per-connection HTTP responder on 127.0.0.1: the first request line picks the answer."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    seen: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                line = conn.recv(4096).decode("latin-1").split("\r\n", 1)[0]
                seen.append(line)
                answer = next((v for k, v in answers.items() if k in line), b"HTTP/1.1 404 Not Found\r\n")
                conn.sendall(answer + b"Content-Length: 0\r\nConnection: close\r\n\r\n")

    threading.Thread(target=loop, daemon=True).start()
    return server, seen, stop


@pytest.fixture
def hub() -> Iterator[tuple[int, list[str]]]:
    """A real HTTP server standing in for the hub: 200 for gpt2's API path, 404 for anything else."""
    server, seen, stop = serve({"/api/models/openai-community/gpt2 ": b"HTTP/1.1 200 OK\r\n"})
    yield int(server.getsockname()[1]), seen
    stop.set()
    server.close()


@pytest.fixture
def proxy() -> Iterator[tuple[int, list[str]]]:
    """A forward HTTP proxy: 200 for requests to good.example, 502 (upstream unreachable) for the rest."""
    server, seen, stop = serve(
        {"//good.example/": b"HTTP/1.1 200 OK\r\n", "": b"HTTP/1.1 502 Bad Gateway\r\n"}
    )
    yield int(server.getsockname()[1]), seen
    stop.set()
    server.close()


def test_refused_port_is_unreachable_at_once() -> None:
    port = free_port()
    start = time.monotonic()
    check = check_hub({"HF_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert time.monotonic() - start < 1.0
    assert check.reachable is False
    assert check.endpoint == f"http://127.0.0.1:{port}"
    assert "ConnectionRefusedError" in check.detail


def test_blackholed_port_is_unreachable_within_the_timeout(blackhole: int) -> None:
    start = time.monotonic()
    check = check_hub({"HF_ENDPOINT": f"http://127.0.0.1:{blackhole}"}, timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert check.reachable is False
    assert 0.9 <= elapsed < 2.0, f"the check took {elapsed:.2f} s for a 1 s bound"
    assert "is unreachable" in check.detail


def test_silent_listener_is_unreachable_within_the_timeout(silent: int) -> None:
    start = time.monotonic()
    check = check_hub({"HF_ENDPOINT": f"http://127.0.0.1:{silent}"}, timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert check.reachable is False
    assert elapsed < 2.0, f"the check took {elapsed:.2f} s for a 1 s bound"


def test_unrouted_address_is_unreachable_within_the_timeout() -> None:
    """10.255.255.1: no route on a plain network (the check times out); on this machine a transparent TLS
    proxy answers every address with its own certificate, which the hub client would refuse too (it took 66 s
    to fail before this rule): unreachable either way, within the bound."""
    start = time.monotonic()
    check = check_hub({"HF_ENDPOINT": BLACKHOLE}, timeout_s=1.0)
    assert time.monotonic() - start < 2.0
    assert check.reachable is False, check.detail


def test_ca_bundle_from_the_environment(tmp_path: object) -> None:
    bundle = os.path.join(str(tmp_path), "ca.pem")
    with open(bundle, "w") as handle:
        handle.write("")
    assert ca_bundle({"REQUESTS_CA_BUNDLE": bundle}) == bundle
    assert ca_bundle({"SSL_CERT_FILE": bundle, "CURL_CA_BUNDLE": "/no/such/file"}) == bundle
    assert ca_bundle({}) is None


def test_this_machines_real_hub_is_unreachable_within_5_s() -> None:
    """This machine has no route to huggingface.co: the default endpoint is judged unreachable quickly."""
    start = time.monotonic()
    check = check_hub({}, model_id="openai-community/gpt2")
    elapsed = time.monotonic() - start
    assert check.endpoint == DEFAULT_ENDPOINT
    if check.reachable:
        pytest.skip("this host can reach huggingface.co: the no-network case cannot be tested here")
    assert elapsed <= HUB_CHECK_TIMEOUT_S + 0.5 < 5.0
    assert "https://huggingface.co/api/models/openai-community/gpt2 is unreachable" in check.detail


def test_answering_hub_is_reachable(hub: tuple[int, list[str]]) -> None:
    port, seen = hub
    check = check_hub({"HF_ENDPOINT": f"http://127.0.0.1:{port}/"}, model_id="openai-community/gpt2")
    assert check.reachable is True
    assert check.detail.endswith("answered: HTTP 200")
    assert seen == ["HEAD /api/models/openai-community/gpt2 HTTP/1.1"]
    missing = check_hub({"HF_ENDPOINT": f"http://127.0.0.1:{port}"}, model_id="no/such")
    assert missing.reachable is True  # the hub answered; loading reports the unknown id
    assert missing.detail.endswith("answered: HTTP 404")


def test_offline_mode_is_not_checked() -> None:
    check = check_hub({"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": BLACKHOLE})
    assert check.reachable is None
    assert check.seconds == 0.0
    assert check.offline_env == "HF_HUB_OFFLINE=1"
    assert offline_setting({"TRANSFORMERS_OFFLINE": "yes"}) == "TRANSFORMERS_OFFLINE=yes"
    assert offline_setting({"HF_HUB_OFFLINE": "0"}) is None


def test_proxy_is_used_and_its_gateway_error_is_unreachable(proxy: tuple[int, list[str]]) -> None:
    port, seen = proxy
    env = {"HF_ENDPOINT": "http://good.example", "HTTP_PROXY": f"http://user:secret@127.0.0.1:{port}"}
    good = check_hub(env)
    assert good.reachable is True
    assert seen == ["HEAD http://good.example/ HTTP/1.1"]
    assert good.as_dict()["proxy"] == f"http://127.0.0.1:{port}"  # credentials never recorded
    assert "secret" not in good.detail
    assert f"through the proxy http://127.0.0.1:{port}" in good.detail
    bad = check_hub({**env, "HF_ENDPOINT": "http://bad.example"})
    assert bad.reachable is False
    assert "the proxy answered HTTP 502" in bad.detail
    bypassed = check_hub({**env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "NO_PROXY": "127.0.0.1"})
    assert bypassed.reachable is False
    assert "ConnectionRefusedError" in bypassed.detail
    assert len(seen) == 2  # the bypassed request never went to the proxy


def test_unreachable_proxy_is_unreachable() -> None:
    check = check_hub({"HTTPS_PROXY": f"127.0.0.1:{free_port()}"})
    assert check.reachable is False
    assert "through the proxy http://127.0.0.1:" in check.detail


def test_proxy_selection_honours_no_proxy() -> None:
    env = {"https_proxy": "http://p:3128", "NO_PROXY": "localhost,.internal"}
    assert proxy_for("https://huggingface.co", env) == "http://p:3128"
    assert proxy_for("https://hub.internal", env) is None
    assert proxy_for("https://internal", env) is None
    assert proxy_for("https://huggingface.co", {"ALL_PROXY": "p:1"}) == "http://p:1"
    assert proxy_for("https://huggingface.co", {"HTTPS_PROXY": "http://p:1", "no_proxy": "*"}) is None
    assert proxy_for("https://huggingface.co", {"HTTP_PROXY": "http://p:1"}) is None


def test_cache_lookup(tmp_path: pytest.TempPathFactory) -> None:
    env = {"HF_HUB_CACHE": str(tmp_path)}
    assert hub_cache_dir(env) == str(tmp_path)
    assert hub_cache_dir({"HF_HOME": "/h"}) == "/h/hub"
    assert cached_snapshot("openai-community/gpt2", env) is None
    snap = tmp_path / "models--openai-community--gpt2" / "snapshots" / "abc123"  # type: ignore[operator]
    snap.mkdir(parents=True)
    assert cached_snapshot("openai-community/gpt2", env) is None  # no config.json: not usable
    (snap / "config.json").write_text("{}")
    assert cached_snapshot("openai-community/gpt2", env) == str(snap)


def test_gpt2_layer_fails_fast_with_cause_and_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """A hub model and a refused endpoint: the layer errs within 5 s, before any import or download."""
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    ctx = Context(options=Options(model="openai-community/gpt2"), env={}, in_kubernetes=False)
    gpt2.early_start(ctx)
    assert isinstance(ctx.hub_check, BackgroundHubCheck)
    result = LayerResult()
    start = time.monotonic()
    gpt2.measure(ctx, result)
    assert time.monotonic() - start < 5.0
    assert result.status == "error"
    assert result.error is not None
    assert result.error.startswith(
        "cannot load 'openai-community/gpt2' from the Hugging Face hub (no network"
    )
    assert "HubUnreachable" in result.error
    assert result.diagnosis is not None
    assert "--model tiny-random-gpt2" in result.diagnosis["fix"]
    assert result.metrics["hub_check"]["reachable"] is False
    assert "transformers_import_s" not in result.metrics  # it never waited for the imports


def test_early_start_checks_only_hub_models() -> None:
    ctx = Context(options=Options(model="tiny-random-gpt2"), env={}, in_kubernetes=False)
    gpt2.early_start(ctx)
    assert ctx.hub_check is None
    ctx = Context(
        options=Options(model="openai-community/gpt2", layers=("driver",)), env={}, in_kubernetes=False
    )
    gpt2.early_start(ctx)
    assert ctx.hub_check is None


def test_offline_mode_without_cache_fails_fast_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    ctx = Context(options=Options(model="openai-community/gpt2"), env={}, in_kubernetes=False)
    result = LayerResult()
    start = time.monotonic()
    gpt2.measure(ctx, result)
    assert time.monotonic() - start < 1.0
    assert result.status == "error"
    assert result.error is not None
    assert "(HF_HUB_OFFLINE=1)" in result.error
    assert (
        "HF_HUB_OFFLINE=1 (offline mode) and openai-community/gpt2 is not in the local hub cache"
        in result.error
    )
    assert result.metrics["hub_check"]["reachable"] is None
