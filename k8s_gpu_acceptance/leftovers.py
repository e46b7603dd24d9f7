"""Leftovers of runs that can no longer clean up after themselves (SIGKILL, OOM kill, a lost CI runner).

Every namespace, ConfigMap and pod the suite creates carries two annotations besides the run's labels:
- `k8s-gpu-acceptance/expires-at`: when the run is provably done with it (RFC 3339, UTC): the moment of
  creation + --pod-timeout + a margin, renewed whenever the run starts another wait in that namespace;
- `k8s-gpu-acceptance/owner`: the process that made it (host, boot id, pid namespace, pid, start time).

An object is *abandoned* when its expiry has passed, or when its owner ran on this very host, boot and pid
namespace and that process is gone (a pid reused by another process has another start time). Anything
else (another host's live run, an object without the annotations, from an older version of the suite) is
left alone unless the user asks for it (`python -m k8s_gpu_acceptance.cleanup --all/--older-than`).

Pure rules first (unit-tested), then the two API calls that list and delete.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from k8s_gpu_acceptance.run import MANAGED_BY_KEY, MANAGED_BY_VALUE, RUN_ID_KEY

EXPIRES_AT_KEY = "k8s-gpu-acceptance/expires-at"
OWNER_KEY = "k8s-gpu-acceptance/owner"
DEFAULT_MARGIN_S = 600.0  # API slowness, log reading, cleanup itself: a run never needs this long past a wait
KEEP_TTL_S = 24 * 3600.0  # --keep: long enough to debug, and still not forever
MANAGED_SELECTOR = f"{MANAGED_BY_KEY}={MANAGED_BY_VALUE}"
PROC = Path("/proc")

Kind = Literal["namespace", "configmap", "pod", "resourceclaimtemplate", "deployment", "service"]


# --- who owns an object ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """A process, identified well enough that "this process is gone" can be proven from the same host."""

    host: str
    boot_id: str
    pid_ns: str
    pid: int
    start_ticks: int

    def encode(self) -> str:
        return (
            f"host={self.host};boot={self.boot_id};pidns={self.pid_ns};pid={self.pid};"
            f"start={self.start_ticks}"
        )

    @classmethod
    def decode(cls, text: str) -> Owner | None:
        """None for anything unparsable: such an object is judged by its expiry alone."""
        try:
            fields = dict(part.split("=", 1) for part in text.split(";"))
            return cls(
                fields["host"], fields["boot"], fields["pidns"], int(fields["pid"]), int(fields["start"])
            )
        except (KeyError, ValueError):
            return None

    def same_pid_space(self, other: Owner) -> bool:
        """Only here can a pid be looked up: same host name, same boot, same pid namespace."""
        return (self.host, self.boot_id, self.pid_ns) == (other.host, other.boot_id, other.pid_ns)


def start_ticks(pid: int, proc: Path = PROC) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat); None if gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing ')'.
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[19])


def current_owner(proc: Path = PROC) -> Owner:
    """This process."""
    try:
        boot_id = (proc / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "unknown"
    try:
        pid_ns = os.readlink(proc / "self/ns/pid")
    except OSError:
        pid_ns = "unknown"
    pid = os.getpid()
    return Owner(socket.gethostname(), boot_id, pid_ns, pid, start_ticks(pid, proc) or 0)


def owner_alive(owner: Owner, me: Owner, proc: Path = PROC) -> bool | None:
    """True/False when it can be proven from here; None when the owner lives elsewhere (or 'unknown')."""
    if "unknown" in (owner.boot_id, owner.pid_ns) or not owner.same_pid_space(me):
        return None
    ticks = start_ticks(owner.pid, proc)
    return ticks is not None and ticks == owner.start_ticks


# --- the annotations ---------------------------------------------------------------------------------


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> dt.datetime | None:
    """An RFC 3339 UTC time as written by this module or the API server; None if absent or garbled."""
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def expires_at(now: dt.datetime, pod_timeout_s: float, margin_s: float = DEFAULT_MARGIN_S) -> dt.datetime:
    """The longest a run can still need an object after starting a wait: the wait's deadline + margin."""
    return now + dt.timedelta(seconds=pod_timeout_s + margin_s)


def lease_annotations(
    now: dt.datetime, pod_timeout_s: float, owner: Owner, margin_s: float = DEFAULT_MARGIN_S
) -> dict[str, str]:
    """The annotations every object the suite creates carries."""
    return {
        EXPIRES_AT_KEY: _rfc3339(expires_at(now, pod_timeout_s, margin_s)),
        OWNER_KEY: owner.encode(),
    }


def needs_renewal(
    annotations: Mapping[str, str] | None,
    now: dt.datetime,
    pod_timeout_s: float,
    margin_s: float = DEFAULT_MARGIN_S,
) -> bool:
    """Renew before a new wait when less than the wait plus half the margin is left (at most one patch
    per margin/2 of run time, however many pods the run creates)."""
    current = parse_time((annotations or {}).get(EXPIRES_AT_KEY))
    if current is None:
        return True
    return current - now < dt.timedelta(seconds=pod_timeout_s + margin_s / 2)


def kept_annotations(now: dt.datetime, ttl_s: float = KEEP_TTL_S) -> dict[str, str | None]:
    """--keep: the run ends on purpose without deleting; the objects stay for `ttl_s`, whoever looks."""
    return {EXPIRES_AT_KEY: _rfc3339(now + dt.timedelta(seconds=ttl_s)), OWNER_KEY: None}


# --- what is left, and what may go -------------------------------------------------------------------


@dataclass(frozen=True)
class Leftover:
    """One object carrying the suite's managed-by label, as the API listed it."""

    kind: Kind
    name: str
    namespace: str | None
    run_id: str
    created: dt.datetime | None
    annotations: Mapping[str, str]
    terminating: bool = False

    def ref(self) -> str:
        return (
            f"{self.kind}/{self.name}"
            if self.namespace is None
            else f"{self.kind}/{self.namespace}/{self.name}"
        )


@dataclass(frozen=True)
class Reap:
    """A leftover to delete and why (the why is printed: nobody should wonder where their objects went)."""

    leftover: Leftover
    reason: str


def _ago(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds / 3600:.1f} h ago"


def abandoned(leftover: Leftover, now: dt.datetime, me: Owner, proc: Path = PROC) -> str | None:
    """Why `leftover` is provably abandoned, or None when it may still be in use (or cannot be told)."""
    owner_text = leftover.annotations.get(OWNER_KEY)
    owner = Owner.decode(owner_text) if owner_text else None
    if owner is not None and owner_alive(owner, me, proc) is False:
        return f"run {leftover.run_id}: its process (pid {owner.pid} on {owner.host}) is gone"
    expiry = parse_time(leftover.annotations.get(EXPIRES_AT_KEY))
    if expiry is not None and expiry <= now:
        return f"run {leftover.run_id}: expired at {_rfc3339(expiry)} ({_ago(now - expiry)})"
    return None


def plan_reaping(
    leftovers: Iterable[Leftover],
    now: dt.datetime,
    me: Owner,
    *,
    current_run: str | None = None,
    everything: bool = False,
    older_than: dt.timedelta | None = None,
    run_ids: Iterable[str] = (),
    proc: Path = PROC,
) -> list[Reap]:
    """Which leftovers to delete, namespaces first; objects inside a namespace being deleted go with it.

    Default: the provably abandoned ones. `everything`, `older_than` and `run_ids` widen the choice on the
    user's explicit request. The current run's own objects are never chosen. Already terminating objects
    are skipped (their deletion is under way).
    """
    wanted_runs = set(run_ids)
    items = sorted(leftovers, key=lambda o: (o.kind != "namespace", o.namespace or "", o.name))
    # An object in one of our namespaces lives and dies with that namespace: --keep marks only the namespace
    # (owner dropped, a day's expiry), and its pods still name the finished process as owner. Reaping them on
    # their own emptied a kept namespace on the next run (seen on the H100 cluster, 2026-11-25).
    ours = {o.name for o in items if o.kind == "namespace"}
    chosen: list[Reap] = []
    for item in items:
        if item.run_id == current_run or item.terminating:
            continue
        reason = None if item.namespace in ours else abandoned(item, now, me, proc)
        if reason is None and everything:
            reason = f"run {item.run_id}: --all"
        old = older_than is not None and item.created is not None and now - item.created >= older_than
        if reason is None and old and item.created is not None:
            reason = f"run {item.run_id}: created {_ago(now - item.created)} (--older-than)"
        if reason is None and item.run_id in wanted_runs:
            reason = f"run {item.run_id}: --run-id"
        if reason is not None:
            chosen.append(Reap(item, reason))
    gone_with = {r.leftover.name for r in chosen if r.leftover.kind == "namespace"}
    return [r for r in chosen if r.leftover.kind == "namespace" or r.leftover.namespace not in gone_with]


# --- the API side ------------------------------------------------------------------------------------


def _leftover(kind: Kind, obj: Any) -> Leftover:
    meta = obj.metadata
    created = meta.creation_timestamp
    return Leftover(
        kind=kind,
        name=meta.name,
        namespace=None if kind == "namespace" else meta.namespace,
        run_id=(meta.labels or {}).get(RUN_ID_KEY, "?"),
        created=created if isinstance(created, dt.datetime) else parse_time(created),
        annotations=dict(meta.annotations or {}),
        terminating=meta.deletion_timestamp is not None,
    )


def find_leftovers(
    core: Any, request_timeout: tuple[float, float], resource: Any | None = None, apps: Any | None = None
) -> list[Leftover]:
    """Every namespace, ConfigMap, pod and Service labelled as the suite's, cluster-wide (four list calls),
    with `resource` (a ResourceV1Api) the ResourceClaimTemplates of --allocation dra (skipped where the
    cluster does not serve resource.k8s.io/v1), and with `apps` (an AppsV1Api) the serving check's
    Deployments."""
    listers: list[tuple[Kind, Any]] = [
        ("namespace", core.list_namespace),
        ("configmap", core.list_config_map_for_all_namespaces),
        ("pod", core.list_pod_for_all_namespaces),
        ("service", core.list_service_for_all_namespaces),
    ]
    if apps is not None:
        listers.append(("deployment", apps.list_deployment_for_all_namespaces))
    found = [
        _leftover(kind, obj)
        for kind, lister in listers
        for obj in lister(label_selector=MANAGED_SELECTOR, _request_timeout=request_timeout).items
    ]
    if resource is not None:
        from kubernetes.client.rest import ApiException

        try:
            templates = resource.list_resource_claim_template_for_all_namespaces(
                label_selector=MANAGED_SELECTOR, _request_timeout=request_timeout
            ).items
        except ApiException as exc:
            if exc.status != 404:
                raise
            templates = []
        found += [_leftover("resourceclaimtemplate", t) for t in templates]
    return found


def delete_leftover(
    core: Any,
    item: Leftover,
    request_timeout: tuple[float, float],
    resource: Any | None = None,
    apps: Any | None = None,
) -> None:
    """Request the deletion (background propagation); a 404 means someone was faster and is fine."""
    from kubernetes.client.rest import ApiException

    body = {"propagationPolicy": "Background", "gracePeriodSeconds": 0}
    needs = {"resourceclaimtemplate": (resource, "a ResourceV1Api"), "deployment": (apps, "an AppsV1Api")}
    api, what = needs.get(item.kind, (core, ""))
    if api is None:
        raise ValueError(f"{item.ref()}: deleting it needs {what}")
    try:
        if item.kind == "namespace":
            core.delete_namespace(item.name, body=body, _request_timeout=request_timeout)
        elif item.kind == "configmap":
            core.delete_namespaced_config_map(item.name, item.namespace, _request_timeout=request_timeout)
        elif item.kind == "resourceclaimtemplate":
            api.delete_namespaced_resource_claim_template(
                item.name, item.namespace, _request_timeout=request_timeout
            )
        elif item.kind == "service":
            core.delete_namespaced_service(item.name, item.namespace, _request_timeout=request_timeout)
        elif item.kind == "deployment":
            api.delete_namespaced_deployment(
                item.name, item.namespace, body=body, _request_timeout=request_timeout
            )
        else:
            core.delete_namespaced_pod(item.name, item.namespace, body=body, _request_timeout=request_timeout)
    except ApiException as exc:
        if exc.status != 404:
            raise


@dataclass
class ReapResult:
    """What a reaping pass did: deleted (with the reason), and what could not be deleted."""

    deleted: list[Reap]
    problems: list[str]

    def lines(self) -> list[str]:
        out = [f"reaped {r.leftover.ref()} ({r.reason})" for r in self.deleted]
        return out + [f"could not reap: {p}" for p in self.problems]


def reap(
    core: Any,
    plan: Iterable[Reap],
    request_timeout: tuple[float, float],
    resource: Any | None = None,
    apps: Any | None = None,
) -> ReapResult:
    """Delete what the plan says, each on its own (one failure does not stop the others)."""
    result = ReapResult([], [])
    for item in plan:
        try:
            delete_leftover(core, item.leftover, request_timeout, resource, apps)
        except Exception as exc:
            status = getattr(exc, "status", None)
            reason = getattr(exc, "reason", None) or type(exc).__name__
            result.problems.append(f"{item.leftover.ref()}: {status or ''} {reason}".replace("  ", " "))
            continue
        result.deleted.append(item)
    return result
