"""`python -m k8s_gpu_acceptance.cleanup`: list, and with --delete remove, what earlier runs left behind.

A dry run by default (like `git clean -n`): it prints every object it would delete and why, and deletes
nothing until `--delete` is given, because `--all` and `--older-than` can reach runs that are still alive
on another machine. Without them it picks only provably abandoned objects (see leftovers.py), the same
ones every suite run reaps by itself at start.

Exit status: 0 done (or nothing to do), 1 some deletion failed, 2 usage error or the cluster not reachable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys

import pytest

from k8s_gpu_acceptance import leftovers
from k8s_gpu_acceptance.cluster import REQUEST_TIMEOUT, connect, describe_api_error
from k8s_gpu_acceptance.settings import Settings

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> dt.timedelta:
    """`90s`, `30m`, `2h`, `1.5d`: the forms kubectl and Go's time.ParseDuration users write."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number and s, m, h or d (e.g. 2h)")
    return dt.timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m k8s_gpu_acceptance.cleanup",
        description="List (default) or delete what earlier k8s-gpu-acceptance runs left on the cluster. "
        "Without --all/--older-than/--run-id: only provably abandoned objects (expired, or their run's "
        "process is gone from this host).",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: the current context)")
    parser.add_argument("--delete", action="store_true", help="delete them (default: only list: a dry run)")
    parser.add_argument(
        "--all", action="store_true", dest="everything", help="every object the suite made, even live runs'"
    )
    parser.add_argument(
        "--older-than", type=parse_duration, metavar="DURATION", help="also objects created before (e.g. 2h)"
    )
    parser.add_argument(
        "--run-id", action="append", default=[], help="also every object of this run (repeatable)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings(
        target="k8s", kubeconfig=args.kubeconfig or os.environ.get("KUBECONFIG"), context=args.context
    )
    try:
        connection = connect(settings)
    except pytest.UsageError as exc:
        print(f"cleanup: {exc}", file=sys.stderr)
        return 2
    from kubernetes import client

    core = client.CoreV1Api(connection.api)
    resource = client.ResourceV1Api(connection.api)
    apps = client.AppsV1Api(connection.api)
    try:
        found = leftovers.find_leftovers(core, REQUEST_TIMEOUT, resource, apps)
    except Exception as exc:
        print(f"cleanup: {describe_api_error(exc, connection.server)}", file=sys.stderr)
        return 2
    plan = leftovers.plan_reaping(
        found,
        dt.datetime.now(dt.timezone.utc),
        leftovers.current_owner(),
        everything=args.everything,
        older_than=args.older_than,
        run_ids=args.run_id,
    )
    runs = sorted({o.run_id for o in found})
    print(f"cleanup: {connection.description}: {len(found)} object(s) of {len(runs)} run(s) carry the label")
    for stuck in (o for o in found if o.terminating):  # runs wait for their pods, not their namespaces
        print(
            f"terminating {stuck.ref()} (deletion under way; still there minutes later means a stuck "
            "finalizer: kubectl get it -o yaml)"
        )
    if not plan:
        print("cleanup: nothing to delete")
        return 0
    if not args.delete:
        for item in plan:
            print(f"would delete {item.leftover.ref()} ({item.reason})")
        print(f"cleanup: dry run: {len(plan)} object(s) would be deleted; pass --delete to delete them")
        return 0
    result = leftovers.reap(core, plan, REQUEST_TIMEOUT, resource, apps)
    for line in result.lines():
        print(line)
    print(
        f"cleanup: {len(result.deleted)} deletion(s) requested (namespaces terminate in the background)"
        + (f", {len(result.problems)} failed" if result.problems else "")
    )
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
