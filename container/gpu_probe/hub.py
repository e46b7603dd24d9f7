"""Is the model hub reachable? A bounded check before any download, and the local hub cache (stdlib only).

Why: with no route to the hub, huggingface_hub's own timeouts and retries took 64 s on a GPU host before the
gpt2 layer could say so. Here one HEAD request to the hub's API for the model (through the proxy the
environment names) decides within HUB_CHECK_TIMEOUT_S, name resolution included; an unreachable hub means the
model is loaded from the local hub cache only, or the layer fails at once with the cause. A TCP connect alone
is not enough: transparent proxies and firewalls accept any connection and then answer nothing (or the wrong
certificate).
Honours HF_ENDPOINT, HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, HTTPS_PROXY / HTTP_PROXY / ALL_PROXY, NO_PROXY,
HF_HUB_CACHE / HF_HOME / XDG_CACHE_HOME.
"""

from __future__ import annotations

import glob
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

DEFAULT_ENDPOINT = "https://huggingface.co"
HUB_CHECK_TIMEOUT_S = 3.0
TRUE_VALUES = ("1", "true", "yes", "on")
PROXY_GATEWAY_ERRORS = (502, 503, 504)


@dataclass
class HubCheck:
    """The outcome of one reachability check (also the document's `hub_check` metric)."""

    endpoint: str
    reachable: bool | None  # None: not checked (offline mode)
    seconds: float
    detail: str
    proxy: str | None = None
    offline_env: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The metric (the proxy's credentials, if any, are never recorded)."""
        return {
            "endpoint": self.endpoint,
            "reachable": self.reachable,
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
            "proxy": _without_credentials(self.proxy) if self.proxy else None,
            "offline_env": self.offline_env,
        }


def hub_endpoint(environ: Any = os.environ) -> str:
    """HF_ENDPOINT or the public hub, without a trailing slash."""
    return (environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline_setting(environ: Any = os.environ) -> str | None:
    """'HF_HUB_OFFLINE=1' (or TRANSFORMERS_OFFLINE) when the environment asks for offline mode, else None."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = environ.get(name)
        if value is not None and value.strip().lower() in TRUE_VALUES:
            return f"{name}={value}"
    return None


def proxy_for(url: str, environ: Any = os.environ) -> str | None:
    """The proxy the environment names for this URL (https_proxy, all_proxy) unless NO_PROXY bypasses it."""
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme or "https"
    proxies = {k.lower(): v for k, v in _proxy_env(environ).items()}
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy:
        return None
    if _bypassed(parsed.hostname or "", proxies.get("no", "")):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _proxy_env(environ: Any) -> dict[str, str]:
    """{'https': ..., 'all': ..., 'no': ...} from *_proxy variables (lower case wins, as in urllib)."""
    found: dict[str, str] = {}
    for key in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        for name in (key, key.lower()):
            value = environ.get(name)
            if value:
                found[key[: -len("_PROXY")].lower()] = value
    return found


def _bypassed(host: str, no_proxy: str) -> bool:
    """NO_PROXY semantics: '*', exact host, or a domain suffix ('.example.com' or 'example.com')."""
    host = host.lower()
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        entry = entry.split(":")[0]
        if entry == "*" or host == entry.lstrip(".") or host.endswith("." + entry.lstrip(".")):
            return True
    return False


def _without_credentials(url: str) -> str:
    """http://user:secret@proxy:3128 -> http://proxy:3128."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.username is None and parsed.password is None:
        return url
    netloc = parsed.hostname or ""
    if parsed.port:
        netloc += f":{parsed.port}"
    return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, parsed.query, parsed.fragment))


def ca_bundle(environ: Any = os.environ) -> str | None:
    """The CA file the hub client trusts beyond the system's (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, ...)."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        path = environ.get(name)
        if path and os.path.isfile(path):
            return str(path)
    return None


def _answer(url: str, proxy: str | None, timeout_s: float, cafile: str | None = None) -> str:
    """'HTTP <status>' once the endpoint (through the proxy, if any) answers a HEAD request; raises otherwise.

    Any HTTP status counts (404 for an unknown id is the hub answering), except a proxy's 502/503/504 (the
    proxy could not reach the hub); a refused CONNECT tunnel is unreachable too, and so is a TLS certificate
    that the system's CAs (plus REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE / SSL_CERT_FILE) do not trust: the hub
    client would refuse it as well (seen: a transparent proxy answering every address with its own
    certificate; without this rule the download's retries took 66 s to fail).
    """
    import ssl  # here, not at the top: the probe's start pays for these only when a hub model is checked
    import urllib.error
    import urllib.request

    scheme = urllib.parse.urlsplit(url).scheme or "https"
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({scheme: proxy} if proxy else {}),
        urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=cafile)),
    )
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "gpu-probe hub check"})
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        if proxy and exc.code in PROXY_GATEWAY_ERRORS:  # the proxy answered for a hub it could not reach
            raise OSError(f"the proxy answered HTTP {exc.code} {exc.reason}") from exc
        return f"HTTP {exc.code}"


def check_hub(
    environ: Any = os.environ,
    timeout_s: float = HUB_CHECK_TIMEOUT_S,
    model_id: str | None = None,
) -> HubCheck:
    """Does the hub endpoint answer an HTTP request within timeout_s (name resolution and proxy included)?"""
    endpoint = hub_endpoint(environ)
    offline = offline_setting(environ)
    if offline:
        return HubCheck(endpoint, None, 0.0, f"not checked: {offline} (offline mode)", offline_env=offline)
    url = f"{endpoint}/api/models/{model_id}" if model_id else f"{endpoint}/"
    proxy = proxy_for(url, environ)
    via = f" through the proxy {_without_credentials(proxy)}" if proxy else ""
    box: dict[str, Any] = {}

    def ask() -> None:
        try:
            box["answer"] = _answer(url, proxy, timeout_s, ca_bundle(environ))
        except Exception as exc:
            reason = getattr(exc, "reason", exc)
            box["error"] = f"{type(reason).__name__}: {reason}"

    start = time.monotonic()
    thread = threading.Thread(target=ask, name="hub-check-request", daemon=True)
    thread.start()
    thread.join(timeout_s)  # getaddrinfo has no timeout of its own: the thread's join bounds it
    seconds = time.monotonic() - start
    if "answer" in box:
        return HubCheck(endpoint, True, seconds, f"{url}{via} answered: {box['answer']}", proxy)
    error = box.get("error") or f"no answer within {timeout_s:.1f} s"
    return HubCheck(endpoint, False, seconds, f"{url}{via} is unreachable: {error}", proxy)


@dataclass
class BackgroundHubCheck:
    """check_hub() started in a thread at the probe's start, so it overlaps the imports."""

    model_id: str | None = None
    environ: Any = field(default_factory=lambda: dict(os.environ))
    timeout_s: float = HUB_CHECK_TIMEOUT_S
    result: HubCheck | None = None

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hub-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.result = check_hub(self.environ, self.timeout_s, self.model_id)

    def wait(self) -> HubCheck:
        """The outcome (the check bounds itself; the join bound is a second safety net)."""
        self._thread.join(self.timeout_s + 2.0)
        if self.result is None:
            endpoint = hub_endpoint(self.environ)
            return HubCheck(endpoint, False, self.timeout_s + 2.0, "the reachability check did not finish")
        return self.result


def hub_cache_dir(environ: Any = os.environ) -> str:
    """Where huggingface_hub keeps downloaded models (HF_HUB_CACHE, HF_HOME/hub, XDG/~/.cache)."""
    if environ.get("HF_HUB_CACHE"):
        return str(environ["HF_HUB_CACHE"])
    if environ.get("HF_HOME"):
        return os.path.join(environ["HF_HOME"], "hub")
    xdg = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


def cached_snapshot(model_id: str, environ: Any = os.environ) -> str | None:
    """The local snapshot folder of a hub model holding a config.json; None when it was never downloaded."""
    folder = os.path.join(hub_cache_dir(environ), "models--" + model_id.replace("/", "--"), "snapshots")
    configs = sorted(glob.glob(os.path.join(glob.escape(folder), "*", "config.json")))
    return os.path.dirname(configs[-1]) if configs else None


class HubUnreachable(OSError):
    """The hub endpoint could not be reached and the model is not in the local hub cache."""
