"""Leftover reaping rules: who owns an object, when it is provably abandoned, what a pass deletes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import sys
from typing import Any

import pytest

from k8s_gpu_acceptance import leftovers
from k8s_gpu_acceptance.leftovers import EXPIRES_AT_KEY, OWNER_KEY, Leftover, Owner

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)


def dead_owner() -> Owner:
    """The identity of a real process that has exited (same host, boot and pid namespace as us)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    ticks = leftovers.start_ticks(child.pid)
    assert ticks is not None
    owner = dataclasses.replace(leftovers.current_owner(), pid=child.pid, start_ticks=ticks)
    child.wait()
    return owner


def item(kind="namespace", name="gpu-acceptance-r1", namespace=None, run_id="r1", annotations=None, **kw):
    return Leftover(kind, name, namespace, run_id, kw.pop("created", NOW), annotations or {}, **kw)


def test_owner_round_trips_and_garbage_decodes_to_none():
    me = leftovers.current_owner()
    assert Owner.decode(me.encode()) == me
    assert Owner.decode("pid=12") is None
    assert Owner.decode("host=a;boot=b;pidns=c;pid=x;start=1") is None


def test_start_ticks_reads_a_command_name_with_spaces_and_parens(tmp_path):
    (tmp_path / "42").mkdir()
    fields = ["S"] + [str(i) for i in range(4, 53)]  # fields 3 (state), 4, 5, ...: each holds its number
    (tmp_path / "42" / "stat").write_text("42 (my (odd) name) " + " ".join(fields) + "\n")
    assert leftovers.start_ticks(42, tmp_path) == 22
    assert leftovers.start_ticks(43, tmp_path) is None


def test_owner_alive_is_proven_only_in_the_same_pid_space():
    me = leftovers.current_owner()
    assert leftovers.owner_alive(me, me) is True
    assert leftovers.owner_alive(dead_owner(), me) is False
    # a reused pid: same pid, another start time
    assert leftovers.owner_alive(dataclasses.replace(me, start_ticks=me.start_ticks + 1), me) is False
    for other in (
        dataclasses.replace(me, host="ci-runner-7"),
        dataclasses.replace(me, boot_id="another-boot"),
        dataclasses.replace(me, pid_ns="pid:[1]"),  # another container on this host: its pids are not ours
    ):
        assert leftovers.owner_alive(other, me) is None


def test_expiry_is_the_wait_plus_margin_and_renewal_comes_before_it_runs_short():
    owner = leftovers.current_owner()
    notes = leftovers.lease_annotations(NOW, 300, owner, margin_s=600)
    assert notes[EXPIRES_AT_KEY] == "2026-11-25T12:15:00Z" and Owner.decode(notes[OWNER_KEY]) == owner
    # renewed once less than the wait (5 min) + half the margin (5 min) is left: 5 min into the lease
    assert not leftovers.needs_renewal(notes, NOW + dt.timedelta(minutes=4), 300, 600)
    assert leftovers.needs_renewal(notes, NOW + dt.timedelta(minutes=5, seconds=1), 300, 600)
    assert leftovers.needs_renewal({}, NOW, 300)
    assert leftovers.needs_renewal({EXPIRES_AT_KEY: "garbage"}, NOW, 300)


def test_abandoned_by_expiry_or_by_a_dead_owner_never_a_live_one():
    me = leftovers.current_owner()
    expired = {EXPIRES_AT_KEY: "2026-11-25T11:30:00Z", OWNER_KEY: dataclasses.replace(me, host="x").encode()}
    assert "expired at 2026-11-25T11:30:00Z (30 min ago)" in leftovers.abandoned(
        item(annotations=expired), NOW, me
    )
    future = "2026-11-25T13:00:00Z"
    dead = {EXPIRES_AT_KEY: future, OWNER_KEY: dead_owner().encode()}
    assert "its process (pid" in leftovers.abandoned(item(annotations=dead), NOW, me)
    alive = {EXPIRES_AT_KEY: future, OWNER_KEY: me.encode()}
    assert leftovers.abandoned(item(annotations=alive), NOW, me) is None
    elsewhere = {EXPIRES_AT_KEY: future, OWNER_KEY: dataclasses.replace(me, host="x").encode()}
    assert leftovers.abandoned(item(annotations=elsewhere), NOW, me) is None
    assert leftovers.abandoned(item(), NOW, me) is None  # an older suite's object: no proof either way


def test_plan_deletes_namespaces_first_and_not_what_goes_with_them():
    me = leftovers.current_owner()
    expired = {EXPIRES_AT_KEY: "2026-11-25T11:00:00Z"}
    found = [
        item("pod", "gpu-probe-r1", "gpu-acceptance-r1", annotations=expired),
        item("configmap", "gpu-probe-r1", "gpu-acceptance-r1", annotations=expired),
        item(annotations=expired),
        item("pod", "gpu-probe-r2", "team-ns", run_id="r2", annotations=expired),  # user's --namespace
        item("namespace", "gpu-acceptance-r3", run_id="r3", annotations=expired, terminating=True),
        item("namespace", "gpu-acceptance-now", run_id="now", annotations=expired),
    ]
    plan = leftovers.plan_reaping(found, NOW, me, current_run="now")
    assert [r.leftover.ref() for r in plan] == ["namespace/gpu-acceptance-r1", "pod/team-ns/gpu-probe-r2"]


def test_a_kept_namespace_keeps_its_pods_though_their_process_is_gone():
    # The H100 cluster run: `--keep` marked the namespace (a day's expiry, no owner); the next run reaped its
    # pod and ConfigMap because they still named the finished process as owner.
    me = leftovers.current_owner()
    kept = {k: v for k, v in leftovers.kept_annotations(NOW).items() if v is not None}
    dead = {EXPIRES_AT_KEY: "2026-11-25T12:30:00Z", OWNER_KEY: dead_owner().encode()}
    found = [
        item(annotations=kept),
        item("pod", "gpu-probe-r1", "gpu-acceptance-r1", annotations=dead),
        item("configmap", "gpu-probe-r1", "gpu-acceptance-r1", annotations=dead),
        item("pod", "gpu-probe-r2", "team-ns", run_id="r2", annotations=dead),  # user's namespace: its own
    ]
    plan = leftovers.plan_reaping(found, NOW, me)
    assert [r.leftover.ref() for r in plan] == ["pod/team-ns/gpu-probe-r2"]
    # A day later the namespace has expired and takes its contents with it.
    later = leftovers.plan_reaping(found, NOW + dt.timedelta(hours=25), me)
    assert [r.leftover.ref() for r in later] == ["namespace/gpu-acceptance-r1", "pod/team-ns/gpu-probe-r2"]


def test_plan_widens_only_on_request():
    me = leftovers.current_owner()
    live = {EXPIRES_AT_KEY: "2026-11-25T13:00:00Z", OWNER_KEY: me.encode()}
    found = [
        item(name="ns-old", run_id="old", created=NOW - dt.timedelta(hours=3)),
        item(name="ns-live", run_id="live", annotations=live, created=NOW - dt.timedelta(minutes=5)),
    ]
    assert leftovers.plan_reaping(found, NOW, me) == []
    older = leftovers.plan_reaping(found, NOW, me, older_than=dt.timedelta(hours=2))
    assert [(r.leftover.name, r.reason) for r in older] == [
        ("ns-old", "run old: created 3.0 h ago (--older-than)")
    ]
    assert {r.leftover.name for r in leftovers.plan_reaping(found, NOW, me, everything=True)} == {
        "ns-old",
        "ns-live",
    }
    assert [r.leftover.name for r in leftovers.plan_reaping(found, NOW, me, run_ids=["live"])] == ["ns-live"]


def test_kept_objects_lose_their_owner_and_live_a_day():
    notes = leftovers.kept_annotations(NOW)
    assert notes == {EXPIRES_AT_KEY: "2026-11-26T12:00:00Z", OWNER_KEY: None}


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("1.5d", 129600)])
def test_cleanup_durations(text, seconds):
    from k8s_gpu_acceptance.cleanup import parse_duration

    assert parse_duration(text).total_seconds() == seconds


def test_cleanup_rejects_a_bad_duration():
    from k8s_gpu_acceptance.cleanup import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--older-than", "2 hours"])


def obj(name: str, namespace: str) -> Any:
    """An expired object of run r9, as the client lists it."""
    from types import SimpleNamespace

    meta = SimpleNamespace(
        name=name,
        namespace=namespace,
        labels={"k8s-gpu-acceptance/run-id": "r9"},
        annotations={EXPIRES_AT_KEY: "2020-01-01T00:00:00Z"},
        creation_timestamp=None,
        deletion_timestamp=None,
    )
    return SimpleNamespace(metadata=meta)


def test_resource_claim_templates_are_found_and_reaped_with_the_resource_api():
    """--allocation dra leaves a ResourceClaimTemplate; a cluster without resource.k8s.io/v1 answers 404."""
    from types import SimpleNamespace

    from kubernetes.client.rest import ApiException

    empty = SimpleNamespace(items=[])
    core = SimpleNamespace(
        list_namespace=lambda **_: empty,
        list_config_map_for_all_namespaces=lambda **_: empty,
        list_pod_for_all_namespaces=lambda **_: empty,
        list_service_for_all_namespaces=lambda **_: empty,
    )
    deleted: list[tuple[str, str]] = []
    resource = SimpleNamespace(
        list_resource_claim_template_for_all_namespaces=lambda **_: SimpleNamespace(items=[obj("t1", "ns1")]),
        delete_namespaced_resource_claim_template=lambda name, ns, **_: deleted.append((ns, name)),
    )
    found = leftovers.find_leftovers(core, (1, 1), resource)
    assert [(f.kind, f.ref()) for f in found] == [("resourceclaimtemplate", "resourceclaimtemplate/ns1/t1")]
    plan = leftovers.plan_reaping(found, dt.datetime.now(dt.timezone.utc), dead_owner())
    assert leftovers.reap(core, plan, (1, 1), resource).problems == [] and deleted == [("ns1", "t1")]

    def not_served(**_: object) -> None:
        raise ApiException(status=404, reason="Not Found")

    resource.list_resource_claim_template_for_all_namespaces = not_served
    assert leftovers.find_leftovers(core, (1, 1), resource) == []


def test_the_serving_checks_deployment_and_service_are_found_and_reaped():
    """The serving check's Deployment (apps/v1) and Service carry the run's labels and lease like its pods."""
    from types import SimpleNamespace

    empty = SimpleNamespace(items=[])
    deleted: list[tuple[str, str, str]] = []
    core = SimpleNamespace(
        list_namespace=lambda **_: empty,
        list_config_map_for_all_namespaces=lambda **_: empty,
        list_pod_for_all_namespaces=lambda **_: empty,
        list_service_for_all_namespaces=lambda **_: SimpleNamespace(items=[obj("gpt2", "team")]),
        delete_namespaced_service=lambda name, ns, **_: deleted.append(("service", ns, name)),
    )
    apps = SimpleNamespace(
        list_deployment_for_all_namespaces=lambda **_: SimpleNamespace(items=[obj("gpt2", "team")]),
        delete_namespaced_deployment=lambda name, ns, **_: deleted.append(("deployment", ns, name)),
    )
    found = leftovers.find_leftovers(core, (1, 1), None, apps)
    assert sorted(f.ref() for f in found) == ["deployment/team/gpt2", "service/team/gpt2"]
    plan = leftovers.plan_reaping(found, dt.datetime.now(dt.timezone.utc), dead_owner())
    assert leftovers.reap(core, plan, (1, 1), None, apps).problems == []
    assert sorted(deleted) == [("deployment", "team", "gpt2"), ("service", "team", "gpt2")]
