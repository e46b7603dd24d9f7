"""Running the probe once per session, in a pod or on this host, and reading its one JSON document.

Owns `ProbeRun` (the document, the raw output, where it ran, the pod's record) and how each target makes one:
`probe_from_pod` (the probe pod's log) and `run_local_probe` (a subprocess of this host). Both targets produce
the same ProbeRun, so the layer tests never care where the probe ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

from gpu_probe.document import ProbeOutputError

from k8s_gpu_acceptance.document import ProbeDocument, ProbeLayer
from k8s_gpu_acceptance.pods import PROBE_PACKAGE, PodRun
from k8s_gpu_acceptance.settings import Settings


@dataclass
class ProbeRun:
    """The probe's document (None when it could not be read) and how it was obtained."""

    target: str
    document: ProbeDocument | None
    raw_output: str
    error: str | None
    where: str
    duration_s: float
    pod: PodRun | None = None

    def layer(self, name: str) -> ProbeLayer | None:
        """One layer of the document (not measured when the document lacks it); None without a document."""
        return self.document.layer(name) if self.document is not None else None

    @property
    def node(self) -> str | None:
        """Where the probe ran: the pod's node (None before it was scheduled), else this host."""
        return self.pod.node_name if self.pod is not None else self.where


def read_document(raw: str, where: str) -> tuple[ProbeDocument | None, str | None]:
    """Parse the probe's output; a garbled document becomes an error naming where it came from."""
    try:
        return ProbeDocument.parse(raw), None
    except ProbeOutputError as exc:
        return None, f"the probe output from {where} is not a valid probe document: {exc}"


def probe_from_pod(pod: PodRun) -> ProbeRun:
    """The document from the probe pod's log."""
    where = f"pod {pod.namespace}/{pod.name} on node {pod.node_name or '?'}"
    raw = pod.log or ""
    document, error = read_document(raw, where) if pod.log is not None else (None, None)
    if pod.failure is not None and document is None:
        error = error or f"{pod.failure.reason}: {pod.failure.message}"
    if document is None and pod.termination == "OOMKilled":
        error = f"the probe container was OOMKilled (exit code {pod.exit_code}): {error or 'no output'}"
    return ProbeRun("k8s", document, raw, error, where, pod.waited_s, pod)


def local_probe_command(settings: Settings) -> list[str]:
    """This interpreter runs the probe from the checkout, exactly as the pod runs it from the ConfigMap."""
    command = [sys.executable, "-m", "gpu_probe", "--json"]
    if settings.model != "auto":
        command += ["--model", settings.model]
    return command


def run_local_probe(settings: Settings) -> ProbeRun:
    """Run the probe as a subprocess on this host with --pod-timeout as its deadline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROBE_PACKAGE.parent), env.get("PYTHONPATH")]))
    where = f"this host ({os.uname().nodename})"
    started = time.monotonic()
    try:
        done = subprocess.run(
            local_probe_command(settings),
            capture_output=True,
            text=True,
            env=env,
            timeout=settings.pod_timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return ProbeRun(
            "local",
            None,
            out,
            f"the probe did not finish within --pod-timeout={settings.pod_timeout}s on {where}",
            where,
            time.monotonic() - started,
        )
    duration = time.monotonic() - started
    document, error = read_document(done.stdout, where)
    if error and done.returncode not in (0, 1):
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        error = f"the probe exited with status {done.returncode} on {where}: {tail or error}"
    return ProbeRun("local", document, done.stdout + done.stderr, error, where, duration)
