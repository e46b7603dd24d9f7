"""The one pod lifecycle of the suite: a PodSession and the probe pod built on it.

Owns: the pod spec (`build_probe_pod`, from manifests/probe-pod.yaml), the probe ConfigMap's contents,
the reading of a pod's state (`classify_pod`, a pure function; `PodSession.wait_pod` makes it the wait's
condition), and `PodSession`: one namespace (made for the run, or `--namespace`), the probe ConfigMap in
it, every pod created in it, the waits (through `wait.wait_for`), log reading and cleanup. The probe pod
(`run_probe_pod`) and every scenario pod (`sharing.ScenarioPods`, a PodSession) use it.

Known-bad states end a wait at once with the reason; the deadline ends it otherwise. Objects are registered
for cleanup as they are made (pods before their create call), so cleanup runs on success, failure and Ctrl-C
alike; with --keep it is skipped and the objects are named instead.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gpu_probe
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from k8s_gpu_acceptance import dra, leftovers
from k8s_gpu_acceptance.cluster import (
    GPU_RESOURCE,
    REQUEST_TIMEOUT,
    Connection,
    api_json,
    api_message,
    describe_api_error,
)
from k8s_gpu_acceptance.run import run_labels, run_selector
from k8s_gpu_acceptance.settings import Settings
from k8s_gpu_acceptance.wait import Seen, Source, V, exists, gone, wait_for

PROBE_PACKAGE = Path(gpu_probe.__file__).resolve().parent
POD_TEMPLATE = Path("manifests") / "probe-pod.yaml"
SERVICE_ACCOUNT_WAIT_S = 30.0
UNFINISHED = "status.phase!=Succeeded,status.phase!=Failed"  # pods that may still hold a GPU
PODS_GONE_WAIT_S = 60.0

IMAGE_PULL_REASONS = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
}
CONTAINER_START_REASONS = {
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
    "PreStartHookError",
    "PostStartHookError",
}
FATAL_EVENT_REASONS = {"FailedCreatePodSandBox", "FailedMount", "FailedAttachVolume", "InvalidDiskCapacity"}
# The resourceclaim controller could not make the pod's ResourceClaim from its template (template missing,
# quota, admission): the pod can never be scheduled.
CLAIM_EVENT_REASONS = {"FailedResourceClaimCreation"}

Progress = Callable[[str], None]


def _quiet(_line: str) -> None:
    """No progress output (unit tests, library use)."""


@dataclass
class PodFailure:
    """Why the pod never produced a probe result: kind is one of unschedulable, image, container,
    sandbox, claim, rejected, timeout, deadline, deleted, api."""

    kind: str
    reason: str
    message: str


@dataclass
class PodRun:
    """What happened to the probe pod, as evidence for the scheduling layer and the reports."""

    namespace: str
    name: str
    node_name: str | None = None
    image: str | None = None
    phase: str | None = None
    scheduled_by: str | None = None
    failure: PodFailure | None = None
    log: str | None = None
    exit_code: int | None = None
    termination: str | None = None  # the runtime's word for how the probe container ended, e.g. "OOMKilled"
    timeline: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    waited_s: float = 0.0
    claims: list[dra.ClaimFacts] = field(
        default_factory=list
    )  # --allocation dra: the pod's claims, as last read


@dataclass(frozen=True)
class Verdict:
    """The watch's reading of one pod state: keep waiting, done, or failed."""

    state: str  # "wait" | "done" | "fail"
    progress: str
    failure: PodFailure | None = None


def event_time(event: dict[str, Any]) -> str:
    """An event's time as the API server wrote it (RFC 3339, UTC): the sort key for oldest first."""
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def classify_pod(pod: dict[str, Any], events: list[dict[str, Any]] | None = None) -> Verdict:
    """Read a pod (as the API's JSON) and its events; pure, so it is unit-tested on recorded states."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Failed" and status.get("reason") == "DeadlineExceeded":
        # The kubelet ended the pod at its activeDeadlineSeconds: no probe document can follow.
        message = status.get("message") or ""
        return Verdict("fail", "DeadlineExceeded", PodFailure("deadline", "DeadlineExceeded", message))
    if phase in ("Succeeded", "Failed"):
        node = (pod.get("spec") or {}).get("nodeName")
        exits = _exits(status)
        return Verdict("done", f"{phase}{f' on {node}' if node else ''}{f': {exits}' if exits else ''}")
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    scheduled = conditions.get("PodScheduled") or {}
    events = events or []
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        if any(e.get("reason") == "TriggeredScaleUp" for e in events):
            return Verdict("wait", "Pending: the cluster autoscaler is adding a node")
        return Verdict(
            "fail",
            "Unschedulable",
            PodFailure("unschedulable", "Unschedulable", scheduled.get("message") or ""),
        )
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason") or ""
        if reason in IMAGE_PULL_REASONS:
            return Verdict("fail", reason, PodFailure("image", reason, waiting.get("message") or ""))
        if reason in CONTAINER_START_REASONS:
            return Verdict("fail", reason, PodFailure("container", reason, waiting.get("message") or ""))
    for event in events:
        if event.get("type") == "Warning" and event.get("reason") in FATAL_EVENT_REASONS:
            return Verdict(
                "fail", event["reason"], PodFailure("sandbox", event["reason"], event.get("message") or "")
            )
        if event.get("type") == "Warning" and event.get("reason") in CLAIM_EVENT_REASONS:
            return Verdict(
                "fail", event["reason"], PodFailure("claim", event["reason"], event.get("message") or "")
            )
    if not pod.get("spec", {}).get("nodeName"):
        return Verdict("wait", "Pending: waiting for the scheduler")
    statuses = status.get("containerStatuses") or []
    for cs in statuses:
        state = cs.get("state") or {}
        if "running" in state:
            return Verdict("wait", f"Running on {pod['spec']['nodeName']}")
        reason = (state.get("waiting") or {}).get("reason")
        if reason:
            return Verdict("wait", f"{reason} on {pod['spec']['nodeName']}")
    if statuses and all("terminated" in (cs.get("state") or {}) for cs in statuses):
        # The containers have ended but the kubelet has not yet set the pod's phase: say how they ended
        # (this read "Pending on <node>" after "Running", as if the pod had gone back).
        return Verdict("wait", f"{_exits(status)} on {pod['spec']['nodeName']}")
    pulling = [e for e in events if e.get("reason") == "Pulling"]
    if pulling:
        return Verdict("wait", f"pulling image on {pod['spec']['nodeName']}")
    return Verdict("wait", f"Pending on {pod['spec']['nodeName']}")


def _exits(status: dict[str, Any]) -> str:
    """`probe exited 0 (Completed)` for each container that has ended; "" when none has."""
    out = []
    for cs in status.get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated is not None:
            reason = f" ({terminated['reason']})" if terminated.get("reason") else ""
            out.append(f"{cs.get('name', 'container')} exited {terminated.get('exitCode', '?')}{reason}")
    return ", ".join(out)


def checkout_file(relative: Path) -> Path:
    """A file of the checkout: beside the package (a checkout or an editable install), else in the current
    directory (a `pip install .` run from its checkout, as the nightly CronJob does)."""
    beside = Path(__file__).resolve().parent.parent / relative
    if beside.is_file():
        return beside
    here = Path.cwd() / relative
    if not here.is_file():
        raise FileNotFoundError(
            f"{relative} not found beside the installed package ({beside}) nor in the current directory "
            f"({here}): run the suite from its checkout (the package installed from a wheel reads the "
            "checkout's manifests/ from the current directory)"
        )
    return here


def pod_template() -> Path:
    """manifests/probe-pod.yaml of the checkout."""
    return checkout_file(POD_TEMPLATE)


def probe_configmap_data(package: Path = PROBE_PACKAGE) -> dict[str, str]:
    """The probe's modules as ConfigMap keys (a key cannot hold '/', so subpackages use '__')."""
    files = sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    if not files:
        raise FileNotFoundError(f"no probe modules in {package}")
    return {_configmap_key(p.relative_to(package)): p.read_text(encoding="utf-8") for p in files}


def _configmap_key(relative: Path) -> str:
    return "--".join(relative.parts)


def probe_configmap_items(data: dict[str, str]) -> list[dict[str, str]]:
    """Mount each key back at its path inside the package directory."""
    return [{"key": key, "path": key.replace("--", "/")} for key in sorted(data)]


def probe_command(settings: Settings) -> list[str]:
    """The probe's command line in the pod."""
    command = ["python3", "-m", "gpu_probe", "--json"]
    if settings.model != "auto":
        command += ["--model", settings.model]
    return command


def build_probe_pod(
    settings: Settings,
    run_id: str,
    namespace: str,
    name: str,
    configmap: str,
    items: list[dict[str, str]],
    template: Path | None = None,
    allocation: str = "device-plugin",
) -> dict[str, Any]:
    """Fill manifests/probe-pod.yaml with this run's options; with `allocation` dra the GPUs come from the
    run's ResourceClaimTemplate instead of an nvidia.com/gpu limit."""
    pod = copy.deepcopy(yaml.safe_load((template or pod_template()).read_text(encoding="utf-8")))
    meta = pod["metadata"]
    meta.update(
        name=name,
        namespace=namespace,
        labels=run_labels(run_id, "probe"),
        annotations=dict(settings.pod_annotations),
    )
    spec = pod["spec"]
    spec["activeDeadlineSeconds"] = settings.pod_timeout
    if settings.runtime_class:
        spec["runtimeClassName"] = settings.runtime_class
    if settings.node_selector:
        spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        spec["tolerations"] = [t.to_k8s() for t in settings.tolerations]
    if settings.image_pull_secret:
        spec["imagePullSecrets"] = [{"name": settings.image_pull_secret}]
    container = spec["containers"][0]
    container["image"] = settings.image
    container["command"] = probe_command(settings)
    resources = container["resources"]
    resources["limits"][GPU_RESOURCE] = str(settings.gpus)
    resources["requests"][GPU_RESOURCE] = str(settings.gpus)
    spec["volumes"][0]["configMap"].update(name=configmap, items=items)
    if allocation == "dra":
        dra.use_claim(pod, dra.claim_template_name(run_id))
    return pod


@dataclass
class PodState(Seen):
    """A pod as a wait last saw it (its API JSON), with the facts the conditions read."""

    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pod(self) -> dict[str, Any]:
        return self.obj

    @property
    def node(self) -> str | None:
        return (self.obj.get("spec") or {}).get("nodeName")

    @property
    def phase(self) -> str:
        return str((self.obj.get("status") or {}).get("phase") or "Pending")

    def unschedulable_message(self) -> str | None:
        for cond in (self.obj.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return str(cond.get("message") or "")
        return None


def session_names(settings: Settings, run_id: str, suffix: str | None = None) -> tuple[str, str]:
    """(namespace, probe ConfigMap) of a session: `gpu-acceptance-<run id>[-<suffix>]` unless --namespace."""
    tail = f"{run_id}-{suffix}" if suffix else run_id
    return settings.namespace or f"gpu-acceptance-{tail}"[:63].rstrip("-"), f"gpu-probe-{tail}"


class PodSession:
    """One namespace (made for the run unless --namespace), the probe ConfigMap in it, the pods created in
    it, their waits and logs, and the cleanup of all of it."""

    def __init__(
        self,
        connection: Connection,
        settings: Settings,
        run_id: str,
        *,
        suffix: str | None = None,
        progress: Progress = _quiet,
    ) -> None:
        self.connection = connection
        self.api = connection.api
        self.core = client.CoreV1Api(connection.api)
        self.resource = client.ResourceV1Api(connection.api)
        self.apps = client.AppsV1Api(connection.api)
        self.settings = settings
        self.run_id = run_id
        self.progress = progress
        self.namespace, self.configmap_name = session_names(settings, run_id, suffix)
        self.items: list[dict[str, str]] = []
        self.created: list[tuple[str, str]] = []
        self.created_namespace = False
        self.opened = False
        self.owner = leftovers.current_owner()
        self.expires: dt.datetime | None = None  # the namespace's expiry as last written

    def lease(self) -> dict[str, str]:
        """The expiry and owner annotations every object of this session carries (see leftovers.py)."""
        now = dt.datetime.now(dt.timezone.utc)
        notes = leftovers.lease_annotations(now, self.settings.pod_timeout, self.owner)
        return notes

    def renew(self) -> None:
        """Before another wait: push the namespace's expiry past it, so no other run reaps it meanwhile
        (one patch per half margin at most, however many pods the session creates)."""
        now = dt.datetime.now(dt.timezone.utc)
        current = (
            {leftovers.EXPIRES_AT_KEY: self.expires.strftime("%Y-%m-%dT%H:%M:%SZ")} if self.expires else {}
        )
        if not self.created_namespace or not leftovers.needs_renewal(current, now, self.settings.pod_timeout):
            return
        notes = self.lease()
        self.core.patch_namespace(
            self.namespace, {"metadata": {"annotations": notes}}, _request_timeout=REQUEST_TIMEOUT
        )
        self.expires = leftovers.parse_time(notes[leftovers.EXPIRES_AT_KEY])

    def name(self, what: str) -> str:
        """A pod name of this run: `<what>-<run id>`, within the 63 characters a name may have."""
        return f"{what}-{self.run_id}"[:63].rstrip("-")

    # -- creation ---------------------------------------------------------------------------------------
    def open(self) -> None:
        """Namespace (unless --namespace) and the probe ConfigMap; each registered for cleanup once made."""
        if self.opened:
            return
        labels = run_labels(self.run_id)
        notes = self.lease()
        if self.settings.namespace is None:
            body = {"metadata": {"name": self.namespace, "labels": labels, "annotations": notes}}
            self.core.create_namespace(body, _request_timeout=REQUEST_TIMEOUT)
            self.created_namespace = True
            self.created.append(("namespace", self.namespace))
            self.expires = leftovers.parse_time(notes[leftovers.EXPIRES_AT_KEY])
            # Admission rejects pods until the controller-manager has made the namespace's `default`
            # ServiceAccount (a race every fresh namespace has). Not there in time: creating the pod fails
            # with the API server's own clear message.
            self._wait(
                Source(
                    self.core.list_namespaced_service_account,
                    (self.namespace,),
                    {"field_selector": "metadata.name=default"},
                ),
                ["default"],
                exists,
                SERVICE_ACCOUNT_WAIT_S,
            )
        data = probe_configmap_data()
        meta = {"name": self.configmap_name, "labels": labels, "annotations": notes}
        configmap = {"metadata": meta, "data": data}
        self.core.create_namespaced_config_map(self.namespace, configmap, _request_timeout=REQUEST_TIMEOUT)
        self.created.append(("configmap", self.configmap_name))
        self.items = probe_configmap_items(data)
        self.opened = True

    def create(self, kind: str, body: dict[str, Any]) -> None:
        """Create an object of `kind` (pod, configmap, deployment, service, resourceclaimtemplate) in the
        session's namespace with the lease annotations; registered first, so a half-made run is cleaned
        too."""
        self.renew()
        body["metadata"]["annotations"] = {**(body["metadata"].get("annotations") or {}), **self.lease()}
        self.created.append((kind, body["metadata"]["name"]))
        creators: dict[str, Callable[..., Any]] = {
            "pod": self.core.create_namespaced_pod,
            "configmap": self.core.create_namespaced_config_map,
            "service": self.core.create_namespaced_service,
            "deployment": self.apps.create_namespaced_deployment,
            "resourceclaimtemplate": self.resource.create_namespaced_resource_claim_template,
        }
        # The created object is not needed: its JSON is not decoded into the client's models (at 1000 pods,
        # time the sweep's watch needs).
        api_json(creators[kind], self.namespace, body, _request_timeout=REQUEST_TIMEOUT)

    def create_pod(self, pod: dict[str, Any]) -> None:
        """Create a pod in the session's namespace."""
        self.create("pod", pod)

    def create_claim_template(self, template: dict[str, Any]) -> None:
        """Create a ResourceClaimTemplate (--allocation dra). The claims made from it are owned by their pod
        and go with it."""
        self.create("resourceclaimtemplate", template)

    def _claims_evidence(self, pod_json: dict[str, Any], result: PodRun) -> list[dra.ClaimFacts]:
        """claims_of, for evidence only: a failure to read is noted, the pod's own verdict stands."""
        try:
            return self.claims_of(pod_json)
        except Exception as exc:
            result.events.append(f"claims not readable: {describe_api_error(exc, self.connection.server)}")
            return []

    def claims_of(self, pod_json: dict[str, Any]) -> list[dra.ClaimFacts]:
        """The pod's ResourceClaims as the scheduler left them (allocated devices, reservation)."""
        found: list[dra.ClaimFacts] = []
        for claim in dra.pod_claim_names(pod_json):
            try:
                obj = self.resource.read_namespaced_resource_claim(
                    claim, self.namespace, _request_timeout=REQUEST_TIMEOUT
                )
            except ApiException as exc:
                found.append(dra.ClaimFacts(claim, False, [f"not readable: {exc.status} {exc.reason}"]))
                continue
            found.append(dra.claim_facts(self.api.sanitize_for_serialization(obj)))
        return found

    # -- waiting ----------------------------------------------------------------------------------------
    def _wait(
        self, source: Source, names: list[str], condition: Callable[[Any], V | None], timeout_s: float
    ) -> dict[str, V]:
        return wait_for(
            source,
            names,
            condition,
            new=PodState,
            timeout_s=timeout_s,
        ).verdicts

    def wait_pods(
        self, names: list[str], decided: Callable[[PodState], str | None], timeout_s: float
    ) -> dict[str, tuple[PodState, str]]:
        """Watch the run's pods in the namespace until `decided` gives each a verdict, or the deadline.

        A deleted pod gets the verdict "deleted", an undecided one "timeout".
        """

        def condition(state: PodState) -> str | None:
            return "deleted" if state.deleted else decided(state) if state.obj else None

        waited = wait_for(
            Source(
                self.core.list_namespaced_pod,
                (self.namespace,),
                {"label_selector": run_selector(self.run_id)},
            ),
            names,
            condition,
            new=PodState,
            timeout_s=timeout_s,
        )
        return {n: (waited.seen[n], waited.verdicts.get(n, "timeout")) for n in names}

    def wait_pod(self, name: str, timeout_s: float) -> PodRun:
        """Watch one pod until it finishes, fails in a known way (`classify_pod`), or the deadline passes.

        Never raises for a cluster-side failure: it is the result's `failure`.
        """
        result = PodRun(namespace=self.namespace, name=name)
        started = time.monotonic()
        last = [""]

        def note(line: str) -> None:
            stamp = f"+{time.monotonic() - started:5.1f}s"
            result.timeline.append(f"{stamp} {line}")
            self.progress(f"probe pod {self.namespace}/{name}: {line} ({stamp})")

        def outcome(state: PodState) -> PodFailure | str | None:
            """The condition: "done", a PodFailure, or None (keep waiting, with progress)."""
            if state.deleted:
                return PodFailure(
                    "deleted", "Deleted", "the probe pod was deleted by someone else while it ran"
                )
            if not state.obj:
                return None
            events = self.events_of(name)
            self._record(result, state.obj, events)
            if dra.uses_claims(state.obj) and state.node and not any(c.allocated for c in result.claims):
                # Read while the pod is bound: a template's claim is deallocated (and deleted) once its pod
                # has ended, so read at the end it would prove nothing.
                result.claims = self._claims_evidence(state.obj, result)
            verdict = classify_pod(state.obj, events)
            if verdict.state == "wait":
                if verdict.progress != last[0]:
                    last[0] = verdict.progress
                    note(verdict.progress)
                return None
            if verdict.state == "fail":
                note(f"failed: {verdict.progress}")
                return verdict.failure
            note(verdict.progress)  # Succeeded/Failed, with each container's exit code
            return "done"

        try:
            waited = wait_for(
                Source(
                    self.core.list_namespaced_pod,
                    (self.namespace,),
                    {"field_selector": f"metadata.name={name}"},
                ),
                [name],
                outcome,
                new=PodState,
                timeout_s=timeout_s,
            )
        except ApiException as exc:
            result.failure = PodFailure("api", f"{exc.status} {exc.reason}", api_message(exc))
            return result
        finally:
            result.waited_s = round(time.monotonic() - started, 2)
        last_seen = waited.seen[name].obj
        if dra.uses_claims(last_seen) and not result.claims:  # never bound: the unallocated claim is evidence
            result.claims = self._claims_evidence(last_seen, result)
        verdict = waited.verdicts.get(name)
        if isinstance(verdict, PodFailure):
            result.failure = verdict
        elif verdict is None:
            result.failure = PodFailure(
                "timeout",
                "DeadlineExceeded",
                f"the probe pod did not finish within --pod-timeout={timeout_s:g}s "
                f"(last state: {last[0] or 'unknown'})",
            )
        return result

    def _record(self, result: PodRun, pod_json: dict[str, Any], events: list[dict[str, Any]]) -> None:
        """What the scheduling layer and the reports want of the pod: node, phase, exit code, events."""
        status = pod_json.get("status") or {}
        result.phase = status.get("phase")
        result.node_name = (pod_json.get("spec") or {}).get("nodeName")
        for cs in status.get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if terminated:
                result.exit_code = terminated.get("exitCode")
                result.termination = terminated.get("reason")
        result.events = [f"{e.get('type')} {e.get('reason')}: {e.get('message')}" for e in events]
        for event in events:
            if event.get("reason") == "Scheduled":
                source = event.get("source") or {}
                result.scheduled_by = (
                    source.get("component") or event.get("reportingComponent") or "scheduler"
                )

    def events_of(self, name: str) -> list[dict[str, Any]]:
        """The pod's events as API JSON, oldest first."""
        selector = f"involvedObject.name={name},involvedObject.kind=Pod"
        listed = api_json(
            self.core.list_namespaced_event,
            self.namespace,
            field_selector=selector,
            _request_timeout=REQUEST_TIMEOUT,
        )
        return sorted(listed.get("items") or [], key=event_time)

    def read_logs(self, result: PodRun, containers: Iterable[str] = ("probe",)) -> dict[str, str]:
        """Each container's log, byte for byte (no client-side JSON decoding); a failure to read one becomes
        the result's failure unless it already has one."""
        logs: dict[str, str] = {}
        for container in containers:
            try:
                response = self.core.read_namespaced_pod_log(
                    result.name,
                    self.namespace,
                    container=container,
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                )
                logs[container] = response.data.decode("utf-8", errors="replace")
            except ApiException as exc:
                if result.failure is None:
                    result.failure = PodFailure(
                        "api",
                        f"{exc.status} {exc.reason}",
                        f"the probe pod finished but its log could not be read: {api_message(exc)}",
                    )
        return logs

    def run_pod(self, name: str, containers: Iterable[str] = ("probe",)) -> tuple[PodRun, dict[str, str]]:
        """Wait for an already created pod, then read its logs (when it ran: done, or a container error)."""
        result = self.wait_pod(name, self.settings.pod_timeout)
        logs: dict[str, str] = {}
        if result.failure is None or result.failure.kind == "container":
            logs = self.read_logs(result, containers)
        return result, logs

    # -- cleanup ----------------------------------------------------------------------------------------
    def cleanup(self, wait_s: float = PODS_GONE_WAIT_S) -> list[str]:
        """Delete what this session created (newest first); returns problems, for the caller to warn about."""
        problems: list[str] = []
        if self.settings.keep:
            what = ", ".join(f"{kind}/{name}" for kind, name in self.created[:5]) or "nothing"
            more = f" and {len(self.created) - 5} more" if len(self.created) > 5 else ""
            problems += self._mark_kept()
            self.progress(
                f"--keep: left {what}{more} in namespace {self.namespace} for "
                f"{leftovers.KEEP_TTL_S / 3600:.0f} h (a later run reaps them after that); delete now with: "
                f"python -m k8s_gpu_acceptance.cleanup --run-id {self.run_id} --delete"
            )
            return problems
        options = client.V1DeleteOptions(grace_period_seconds=0, propagation_policy="Background")
        deleters: dict[str, Callable[[str], Any]] = {
            "pod": lambda n: self.core.delete_namespaced_pod(
                n, self.namespace, body=options, _request_timeout=REQUEST_TIMEOUT
            ),
            "configmap": lambda n: self.core.delete_namespaced_config_map(
                n, self.namespace, _request_timeout=REQUEST_TIMEOUT
            ),
            "resourceclaimtemplate": lambda n: self.resource.delete_namespaced_resource_claim_template(
                n, self.namespace, _request_timeout=REQUEST_TIMEOUT
            ),
            "service": lambda n: self.core.delete_namespaced_service(
                n, self.namespace, _request_timeout=REQUEST_TIMEOUT
            ),
            # Foreground: the Deployment's ReplicaSet and pods go before it is gone (in --namespace, where
            # no namespace deletion takes them).
            "deployment": lambda n: self.apps.delete_namespaced_deployment(
                n,
                self.namespace,
                body=client.V1DeleteOptions(propagation_policy="Foreground"),
                _request_timeout=REQUEST_TIMEOUT,
            ),
            "namespace": lambda n: self.core.delete_namespace(
                n, body=options, _request_timeout=REQUEST_TIMEOUT
            ),
        }

        def attempt(what: str, delete: Callable[[], Any]) -> None:
            try:
                delete()
            except ApiException as exc:
                if exc.status != 404:
                    problems.append(f"could not delete {what}: {exc.status} {exc.reason}")
            except Exception as exc:
                problems.append(f"could not delete {what}: {describe_api_error(exc, self.connection.server)}")

        # A namespace the session made goes whole: its Deployments (so no ReplicaSet makes new pods), its
        # unfinished pods in one call (grace 0: the API removes them at once, so their GPUs are free when
        # pytest returns), then the namespace, which takes the finished pods with it: they hold no GPU, and
        # the API server deletes a collection one pod at a time (15 s for a 1000-node sweep's pods).
        if self.created_namespace:
            for kind, name in self.created:
                if kind == "deployment":
                    attempt(f"{kind}/{name}", functools.partial(deleters[kind], name))
            attempt(
                f"the pods of {self.namespace}",
                lambda: api_json(
                    self.core.delete_collection_namespaced_pod,
                    self.namespace,
                    grace_period_seconds=0,
                    field_selector=UNFINISHED,
                    _request_timeout=REQUEST_TIMEOUT,
                ),
            )
        doomed = [("namespace", self.namespace)] if self.created_namespace else list(reversed(self.created))
        for kind, name in doomed:
            attempt(f"{kind}/{name}", functools.partial(deleters[kind], name))
        if not problems:
            problems += self._wait_pods_gone(wait_s)
        if not problems:
            self.created.clear()  # idempotent: a second call (interrupt, then finalizer) has nothing to do
        return problems

    def _mark_kept(self) -> list[str]:
        """--keep: no owner (its process ends now on purpose), an expiry a day away."""
        notes = leftovers.kept_annotations(dt.datetime.now(dt.timezone.utc))
        patch = {"metadata": {"annotations": notes}}
        try:
            if self.created_namespace:
                self.core.patch_namespace(self.namespace, patch, _request_timeout=REQUEST_TIMEOUT)
                return []
            patchers: dict[str, Callable[..., Any]] = {
                "pod": self.core.patch_namespaced_pod,
                "configmap": self.core.patch_namespaced_config_map,
                "service": self.core.patch_namespaced_service,
                "deployment": self.apps.patch_namespaced_deployment,
                "resourceclaimtemplate": self.resource.patch_namespaced_resource_claim_template,
            }
            for kind, name in self.created:
                patchers[kind](name, self.namespace, patch, _request_timeout=REQUEST_TIMEOUT)
        except Exception as exc:
            return [
                f"--keep: could not mark the kept objects: {describe_api_error(exc, self.connection.server)}"
            ]
        return []

    def _wait_pods_gone(self, wait_s: float) -> list[str]:
        """Watch until the run's unfinished pods in the namespace are gone (its own and those its Deployments
        made): then no GPU is held any more when pytest returns. In a namespace the session made, finished
        pods go with the namespace, a few seconds later.

        Not the namespace: kube-controller-manager's namespace controller waits a fixed 5 s
        (namespaceDeletionGracePeriod) before it empties and removes a deleted namespace, which would cost
        every run 5 s for nothing. A terminating namespace is not a leftover: the next run leaves it alone,
        and the cleanup command lists one stuck in Terminating.
        """
        deadline = time.monotonic() + wait_s
        ours = {"label_selector": run_selector(self.run_id)}
        if self.created_namespace:
            ours["field_selector"] = UNFINISHED
        try:
            while True:  # a ReplicaSet may still make a pod before its Deployment's deletion reaches it
                listed = api_json(
                    self.core.list_namespaced_pod, self.namespace, _request_timeout=REQUEST_TIMEOUT, **ours
                )
                left = [p["metadata"]["name"] for p in listed.get("items") or []]
                if not left:
                    return []
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wait(
                    Source(self.core.list_namespaced_pod, (self.namespace,), ours), left, gone, remaining
                )
        except Exception as exc:
            return [
                f"could not confirm the pods of {self.namespace} are gone: "
                f"{describe_api_error(exc, self.connection.server)}"
            ]
        return [
            f"{len(left)} pod(s) in {self.namespace} still there after {wait_s:.0f}s: {', '.join(left[:5])} "
            f"(they will go by themselves; check: kubectl get pods -n {self.namespace} -o yaml)"
        ]


def probe_pod_name(run_id: str) -> str:
    """The session's one probe pod."""
    return f"gpu-probe-{run_id}"


def probe_pod_manifest(settings: Settings, run_id: str, allocation: str = "device-plugin") -> dict[str, Any]:
    """The probe pod of this run, as it will be created (namespace and ConfigMap named as PodSession names
    them), so a conftest that overrides `gpu_settings` sees its values here. `allocation` is the resolved
    one (device-plugin or dra)."""
    namespace, configmap = session_names(settings, run_id)
    items = probe_configmap_items(probe_configmap_data())
    return build_probe_pod(
        settings, run_id, namespace, probe_pod_name(run_id), configmap, items, allocation=allocation
    )


def run_probe_pod(session: PodSession, manifest: dict[str, Any]) -> PodRun:
    """Open the session, create the probe pod and wait for its result; never raises for a cluster-side
    failure (a rejected object is a `rejected` failure, an unreachable API an `api` one)."""
    name = manifest["metadata"]["name"]
    image = manifest["spec"]["containers"][0]["image"]
    try:
        session.open()
        if dra.uses_claims(manifest):
            template = dra.claim_template(session.run_id, session.namespace, session.settings.gpus)
            session.create_claim_template(template)
        session.create_pod(manifest)
    except ApiException as exc:
        failure = PodFailure("rejected", f"{exc.status} {exc.reason}", api_message(exc))
        return PodRun(session.namespace, name, image=image, failure=failure)
    except Exception as exc:
        failure = PodFailure("api", type(exc).__name__, describe_api_error(exc, session.connection.server))
        return PodRun(session.namespace, name, image=image, failure=failure)
    result, logs = session.run_pod(name)
    result.log, result.image = logs.get("probe"), image
    return result


def cleanup_when_done(request: pytest.FixtureRequest, session: PodSession) -> Callable[[], None]:
    """Register the session's cleanup on `request` before anything is created; returns it, so a fixture
    whose setup is interrupted (Ctrl-C/SIGTERM: pytest drops such a fixture's finalizers) can call it too."""

    def cleanup() -> None:
        for problem in session.cleanup():
            request.node.warn(pytest.PytestWarning(f"gpu-acceptance cleanup: {problem}"))

    request.addfinalizer(cleanup)
    return cleanup
