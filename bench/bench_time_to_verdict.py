"""Time to verdict: the suite's whole run against a bare GPU pod round trip, on the same node, in one sitting.

The floor is what any script must do to learn anything from a GPU node: create a pod (the suite's own probe
pod spec: same image, command, probe ConfigMap, GPU request, node), wait until it has finished, read its log.
Its namespace and ConfigMap are made beforehand and not timed. The suite is timed as a user runs it: a
`pytest -m gpu` subprocess (startup, options, cluster and device plugin layers, its namespace and ConfigMap,
the pod, the layer tests, the three reports, the cleanup that waits until its unfinished pods are gone). Runs
alternate (bare, suite, bare, suite, ...) so both see the same machine; medians are compared. The goal is
suite / bare <= 1.3; nothing is asserted.

Each run starts after an untimed random pause of 0-1 s (`--no-jitter` turns it off): a kubelet notices a
container's exit at its next PLEG relist, once a second, so rounds that repeat at a steady period lock each
kind of run to one phase of that tick, and one side can be up to a second luckier in every round of a
sitting (on an H100: the suite's pod wait 7.6 s against a bare round trip of 7.24 s in one sitting, 7.71 s
against 8.17 s in another).

Where the overhead goes comes from the suite's own report.json: the pod's wait as the suite saw it, each
layer's duration, and the rest (interpreter start, imports, reports, cleanup) as wall minus session.

On the testbed's real node (kubelet + containerd + runc, testbed/README.md) this runs as is:

    .venv/bin/python bench/bench_time_to_verdict.py             # node and image from the testbed's state
    .venv/bin/python bench/bench_time_to_verdict.py --node N --image I --toleration k=v:NoSchedule ...

On a GPU cluster, pass --kubeconfig, --node and --image (and --runtime-class if the cluster needs one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bare_namespace import make_bare_namespace  # noqa: E402
from kubernetes import client, config  # noqa: E402

from k8s_gpu_acceptance.pods import (  # noqa: E402
    build_probe_pod,
    probe_configmap_data,
    probe_configmap_items,
)
from k8s_gpu_acceptance.settings import Settings, Toleration  # noqa: E402
from k8s_gpu_acceptance.wait import Seen, Source, wait_for  # noqa: E402

STATE = Path.home() / ".cache" / "k8s-gpu-acceptance" / "state" / "state.json"
REAL_NODE_TAINT = "testbed.k8s-gpu-acceptance.io/real-node=true:NoSchedule"
POD_WAIT = "of which the pod wait (scheduling)"


def testbed_defaults() -> dict[str, str]:
    """The testbed's real node and its probe image, when a testbed with one is running here."""
    try:
        state = json.loads(STATE.read_text())
    except (OSError, ValueError):
        return {}
    node = state.get("real_node") or {}
    return {
        "kubeconfig": state.get("kubeconfig", ""),
        "node": node.get("name", ""),
        "image": (node.get("images") or {}).get("probe", ""),
    }


def finished(seen: Seen) -> str | None:
    """The bare round trip's whole wait condition: the pod ended (what a script waits for)."""
    phase = (seen.obj.get("status") or {}).get("phase")
    return phase if phase in ("Succeeded", "Failed") else None


def bare_round_trip(api: client.ApiClient, settings: Settings, namespace: str, configmap: str) -> float:
    """Create the pod, wait until it has finished, read its log: seconds."""
    core = client.CoreV1Api(api)
    name = f"bare-{uuid.uuid4().hex[:8]}"
    items = probe_configmap_items(probe_configmap_data())
    pod = build_probe_pod(settings, "bench", namespace, name, configmap, items)
    started = time.perf_counter()
    core.create_namespaced_pod(namespace, pod)
    waited = wait_for(
        Source(core.list_namespaced_pod, (namespace,), {"field_selector": f"metadata.name={name}"}),
        [name],
        finished,
        new=Seen,
        timeout_s=settings.pod_timeout,
    )
    log = core.read_namespaced_pod_log(name, namespace, container="probe", _preload_content=False).data
    took = time.perf_counter() - started
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    if name not in waited.verdicts or not log:
        raise SystemExit(f"the bare pod {namespace}/{name} did not finish with a log: {waited.verdicts}")
    return took


def suite_run(args: argparse.Namespace, kubeconfig: str, extra: list[str]) -> tuple[float, dict[str, Any]]:
    """The suite as a user runs it: wall seconds and its report.json."""
    work = Path(tempfile.mkdtemp(prefix="bench-ttv-"))
    command = [
        sys.executable, "-P", "-m", "pytest", "-p", "no:cacheprovider", f"--rootdir={REPO}", "-q",
        "--no-header",
        "-c", str(REPO / "pytest.ini"), str(REPO / "tests" / "gpu"),
        "-m", "gpu and not (sharing or isolation or exhaustion or distinct_gpus)",
        f"--report-dir={work / 'reports'}", f"--kubeconfig={kubeconfig}", *extra, *args.pytest_arg,
    ]  # fmt: skip
    started = time.perf_counter()
    # From the checkout, as a user runs it: manifests/probe-pod.yaml is found beside the package only when
    # the package is the checkout's (editable); installed from a wheel, the suite reads it from the current
    # directory (on the GPU host a temporary directory here failed every run's probe pod).
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False, timeout=900)
    wall = time.perf_counter() - started
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
    if not (work / "reports" / "report.json").is_file():
        raise SystemExit(f"the suite wrote no report.json (exit {done.returncode}):\n{tail}")
    report = json.loads((work / "reports" / "report.json").read_text())
    if report.get("outcome") == "not-run":  # a usage error is no verdict: timing it flatters the suite
        raise SystemExit(f"the suite ran no test (exit {done.returncode}), nothing to compare:\n{tail}")
    layers = {entry["name"]: entry for entry in report.get("layers") or []}
    scheduling = layers.get("scheduling") or {}
    if scheduling.get("outcome") != "passed":  # its pod never ran: nothing like the bare round trip
        why = [
            f"{name}: {entry.get('outcome')}: {_gist(str(entry.get('message') or ''))}"
            for name, entry in layers.items()
            if entry.get("outcome") not in ("passed", None)
        ][:3]
        raise SystemExit(
            "the suite's probe pod did not run (scheduling "
            f"{scheduling.get('outcome', 'missing')}), so its time is no time to verdict:\n" + "\n".join(why)
        )
    return wall, report


def _gist(message: str) -> str:
    """The line that says what went wrong: a fixture error's `E ...` line (its first line only lists the
    fixture's arguments), else the first line."""
    lines = message.splitlines() or [""]
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    return (errors[-1] if errors else lines[0])[:300]


def suite_options(args: argparse.Namespace) -> list[str]:
    options = [
        f"--image={args.image}",
        f"--node-selector=kubernetes.io/hostname={args.node}",
        f"--pod-timeout={args.pod_timeout}",
        f"--model={args.model}",
    ]
    options += [f"--toleration={t}" for t in args.toleration]
    if args.runtime_class:
        options.append(f"--runtime-class={args.runtime_class}")
    return options


def breakdown(report: dict[str, Any], wall: float) -> dict[str, float]:
    """Where the suite's time went, from its own report."""
    layers = {entry["name"]: entry for entry in report["layers"]}
    out = {name: float(entry["duration_s"] or 0.0) for name, entry in layers.items()}
    pod_wait = (layers.get("scheduling", {}).get("metrics") or {}).get("waited_s")
    out[POD_WAIT] = float(pod_wait or 0.0)
    out["session (report.json duration)"] = float(report["duration_s"])
    out["outside the session (interpreter, imports, collection)"] = round(wall - report["duration_s"], 2)
    return out


def main() -> int:
    defaults = testbed_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG") or defaults.get("kubeconfig"))
    parser.add_argument("--node", default=defaults.get("node"), help="the GPU node (default: testbed's real)")
    parser.add_argument("--image", default=defaults.get("image"), help="the probe image")
    parser.add_argument(
        "--toleration",
        action="append",
        default=None,
        help=f"key[=value]:effect (repeatable; default nvidia.com/gpu:NoSchedule and {REAL_NODE_TAINT})",
    )
    parser.add_argument("--runtime-class")
    parser.add_argument("--pod-timeout", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--no-jitter", dest="jitter", action="store_false", help="no random 0-1 s pause before each run"
    )
    parser.add_argument("--seed", type=int, help="the pauses' random seed (default: a fresh one, printed)")
    parser.add_argument(
        "--model", default="auto", help="the probe's GPT-2 model, for both pods (e.g. random-gpt2-small)"
    )
    parser.add_argument(
        "--pytest-arg",
        action="append",
        default=[],
        help="one more argument for the suite's pytest (repeatable), e.g. "
        "--pytest-arg=--import-mode=importlib where a checkout would shadow the installed plugin",
    )
    args = parser.parse_args()
    if not (args.kubeconfig and args.node and args.image):
        parser.error("no testbed with a real node here: pass --kubeconfig, --node and --image")
    args.toleration = args.toleration or ["nvidia.com/gpu:NoSchedule", REAL_NODE_TAINT]
    tolerations = []
    for text in args.toleration:
        head, _, effect = text.rpartition(":")
        key, eq, value = head.partition("=")
        tolerations.append(Toleration(key, effect, value if eq else None))
    settings = dataclasses.replace(
        Settings(target="k8s"),
        image=args.image,
        node_selector={"kubernetes.io/hostname": args.node},
        tolerations=tuple(tolerations),
        runtime_class=args.runtime_class,
        pod_timeout=args.pod_timeout,
        model=args.model,
    )
    api = config.new_client_from_config(config_file=args.kubeconfig)
    core = client.CoreV1Api(api)
    namespace = f"bench-ttv-{uuid.uuid4().hex[:6]}"
    configmap = "gpu-probe-bench"
    make_bare_namespace(core, namespace, configmap)  # not timed
    bare: list[float] = []
    suite: list[float] = []
    reports: list[dict[str, float]] = []
    try:
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
        pause = random.Random(seed)
        jitter = f"random 0-1 s pause before each run (seed {seed})" if args.jitter else "no jitter"
        print(
            f"bench_time_to_verdict: node {args.node}, image {args.image}, {args.repeats} x (bare, suite), "
            f"{jitter}"
        )
        for i in range(args.repeats):
            time.sleep(pause.random() if args.jitter else 0)  # untimed: a random phase to the PLEG tick
            bare.append(bare_round_trip(api, settings, namespace, configmap))
            time.sleep(pause.random() if args.jitter else 0)
            wall, report = suite_run(args, args.kubeconfig, suite_options(args))
            suite.append(wall)
            reports.append(breakdown(report, wall))
            print(
                f"  round {i + 1}: bare {bare[-1]:6.2f} s   suite {wall:6.2f} s   "
                f"(suite outcome {report['outcome']}, pod wait {reports[-1][POD_WAIT]} s)",
                flush=True,
            )
    finally:
        core.delete_namespace(namespace)
    b, s = statistics.median(bare), statistics.median(suite)
    print(f"median bare GPU pod round trip: {b:.2f} s")
    print(f"median suite whole run:         {s:.2f} s")
    print(f"ratio suite / bare:             {s / b:.2f} (goal <= 1.3)")
    print("where the suite's time went (median run):")
    middle = reports[suite.index(sorted(suite)[len(suite) // 2])]
    for key, value in middle.items():
        print(f"  {key:<55} {value:7.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
