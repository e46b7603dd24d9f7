"""AI Conformance accelerator_metrics: find NVIDIA's DCGM exporter and check it exposes per-GPU utilization,
memory, temperature and power.

Owns finding the exporter's Service (GPU Operator, Helm chart and static manifest names), the scrape through
the API server's service proxy (no network path from the runner to the pods is needed), and the pure parsing
of the Prometheus text (unit-tested on exporter output).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from k8s_gpu_acceptance.cluster import REQUEST_TIMEOUT

# The exporter's default counters (etc/default-counters.csv) for what the requirement names.
REQUIRED_SERIES: dict[str, tuple[str, ...]] = {
    "utilization": ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"),
    "memory": ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"),
    "temperature": ("DCGM_FI_DEV_GPU_TEMP",),
    "power": ("DCGM_FI_DEV_POWER_USAGE",),
}
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def is_dcgm_exporter(name: str, labels: Mapping[str, str] | None) -> bool:
    """GPU Operator: nvidia-dcgm-exporter (app=nvidia-dcgm-exporter); Helm chart: app.kubernetes.io/name."""
    labels = labels or {}
    return (
        "dcgm-exporter" in name
        or labels.get("app") == "nvidia-dcgm-exporter"
        or labels.get("app.kubernetes.io/name") == "dcgm-exporter"
    )


def per_gpu_series(text: str) -> dict[str, set[str]]:
    """Metric name -> the GPUs (UUID label, else gpu index) it has a sample for."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match.group(3) or ""))
        gpu = labels.get("UUID") or labels.get("uuid") or labels.get("gpu")
        if gpu is not None:
            out.setdefault(match.group(1), set()).add(gpu)
    return out


@dataclass
class MetricsCheck:
    """What the scrape showed: GPUs seen, and per requirement the series found or missing."""

    gpus: list[str] = field(default_factory=list)
    found: dict[str, str] = field(default_factory=dict)  # what -> series name
    missing: list[str] = field(default_factory=list)  # what (utilization, memory, ...)
    incomplete: dict[str, list[str]] = field(default_factory=dict)  # series -> GPUs without a sample


def check_series(text: str) -> MetricsCheck:
    """Each required kind of metric exposed, by one of its series, for every GPU the exporter reports."""
    series = per_gpu_series(text)
    gpus = sorted(set().union(*series.values())) if series else []
    result = MetricsCheck(gpus=gpus)
    for what, names in REQUIRED_SERIES.items():
        name = next((n for n in names if n in series), None)
        if name is None:
            result.missing.append(what)
            continue
        result.found[what] = name
        lacking = sorted(set(gpus) - series[name])
        if lacking:
            result.incomplete[name] = lacking
    return result


@dataclass
class Exporter:
    namespace: str
    service: str
    port: str


def find_exporter(core: client.CoreV1Api) -> tuple[Exporter | None, int]:
    """The first DCGM exporter Service cluster-wide, and how many of its pods are Running."""
    for svc in core.list_service_for_all_namespaces(_request_timeout=REQUEST_TIMEOUT).items:
        meta = svc.metadata
        if not is_dcgm_exporter(meta.name, meta.labels):
            continue
        ports = svc.spec.ports or []
        port = next(
            (p for p in ports if (p.name or "").startswith("gpu-metrics")), ports[0] if ports else None
        )
        if port is None:
            continue
        selector = ",".join(f"{k}={v}" for k, v in (svc.spec.selector or {}).items())
        pods = core.list_namespaced_pod(
            meta.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
        ).items
        running = sum(1 for p in pods if p.status.phase == "Running")
        return Exporter(meta.namespace, meta.name, str(port.name or port.port)), running
    return None, 0


def scrape(core: client.CoreV1Api, exporter: Exporter) -> str:
    """GET /metrics through the API server's service proxy (RBAC: get services/proxy)."""
    response: Any = core.connect_get_namespaced_service_proxy_with_path(
        f"{exporter.service}:{exporter.port}",
        exporter.namespace,
        "metrics",
        _preload_content=False,
        _request_timeout=REQUEST_TIMEOUT,
    )
    return str(response.data.decode("utf-8", errors="replace"))
