"""The fleet sweep's time for 1, 10, 100 and 1000 GPU nodes, its ratio to one node, and where the time goes.

Needs the testbed with at least max(--sizes) identical 1-GPU nodes (it changes the node set, so only the
testbed's owner runs this, under the team's lock):

    flock /work/team/testbed.lock sh -c '.venv/bin/python -m testbed up --gpu-nodes 1000 &&
        .venv/bin/python bench/bench_sweep.py; .venv/bin/python -m testbed up'

Each size is one whole suite run as users run it (`pytest -m gpu --all-nodes`, a subprocess: startup,
collection, the probe pods, the per-node tests, the reports), in the same testbed state; N nodes are chosen
by a label selector on their hostnames (all of them for the largest size). Printed per size: wall seconds,
ratio to the 1-node run, the pytest process's peak RSS, the sweep's own phases from report.json, and the
CPU seconds each testbed process (apiserver, etcd, scheduler, controller-manager, kwok, recording
controller) and the pytest process spent during the run: on a 2-core machine the busiest one is the limit.
Beside each suite run, the same sweep done by a bare client (`--bare`, on by default): the least any tool must
do to learn the same from the same nodes, with the suite's own probe pod spec and the same bound on pods at
once: create one pod per node (8 threads), watch them until each has ended, starting the next node's pod as
one ends, and read each log. Its namespace and ConfigMap are made beforehand and not timed, and there is no
interpreter start, pytest, cluster layers, classification, events, reports or cleanup. bare(N) / bare(1) is
what the control plane alone allows on this machine; suite(N) / bare(N) is what the suite adds to it.
Between runs the bench waits (untimed) until the previous run's namespace is gone, so no run pays for the
last one's deletion.

Nothing is asserted; the goal (1000 nodes within 3x of one) is judged from the printed ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bare_namespace import make_bare_namespace  # noqa: E402
from kubernetes import client, config  # noqa: E402

from k8s_gpu_acceptance.cluster import api_json  # noqa: E402
from k8s_gpu_acceptance.pods import build_probe_pod, probe_configmap_items  # noqa: E402
from k8s_gpu_acceptance.run import MANAGED_BY_KEY, run_selector  # noqa: E402
from k8s_gpu_acceptance.settings import Settings  # noqa: E402
from k8s_gpu_acceptance.wait import Seen, Source, wait_for  # noqa: E402

STATE = (
    Path(os.environ.get("TESTBED_STATE_DIR") or Path.home() / ".cache/k8s-gpu-acceptance/state")
    / "state.json"
)
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def testbed_state() -> dict:
    """The running testbed's state file, read as data (any version of the testbed package wrote it)."""
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        raise SystemExit("the testbed is not running: python -m testbed up --gpu-nodes 1000") from None


def testbed_processes() -> dict[str, int]:
    """The testbed's processes: kwokctl's control plane (its pid files) and what `up` started."""
    state = testbed_state()
    pid_dir = Path(state["kwok_workdir"]) / "clusters" / state["cluster_name"] / "pids"
    pids = {path.stem: int(path.read_text().strip() or 0) for path in sorted(pid_dir.glob("*.pid"))}
    pids.update({name: proc["pid"] for name, proc in state.get("procs", {}).items()})
    return {name: pid for name, pid in pids.items() if pid > 0}


def selector_args(size: int, largest: int) -> list[str]:
    if size == largest:
        return ["--all-nodes"]
    names = ",".join(f"gpu-node-{i}" for i in range(1, size + 1))
    return [f"--node-label-selector=kubernetes.io/hostname in ({names})"]


def run_sweep(size: int, largest: int, max_parallel: int | None, kubeconfig: str) -> dict:
    """One whole suite run; returns wall, peak RSS, CPU per process, and report.json's sweep section."""
    report_dir = Path(tempfile.mkdtemp(prefix=f"bench-sweep-{size}-"))
    command = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--rootdir={REPO}",
        "-c", str(REPO / "pytest.ini"), str(REPO / "tests" / "gpu"),
        "-m", "gpu and not sharing and not isolation and not exhaustion", "-q", "--no-header",
        f"--report-dir={report_dir}", f"--kubeconfig={kubeconfig}", "--pod-timeout=600",
        *selector_args(size, largest),
        *([f"--max-parallel={max_parallel}"] if max_parallel else []),
    ]  # fmt: skip
    processes = testbed_processes()
    before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    started = time.perf_counter()
    with open(report_dir / "output.txt", "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=report_dir)
        _pid, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    cpu = {name: round(cpu_seconds(pid) - before[name], 1) for name, pid in processes.items()}
    cpu["pytest (the suite)"] = round(usage.ru_utime + usage.ru_stime, 1)
    report = json.loads((report_dir / "report.json").read_text())
    verdicts = {entry["status"] for entry in report.get("nodes", []) if entry["name"].startswith("gpu-node-")}
    return {
        "size": size,
        "exit": os.waitstatus_to_exitcode(status),
        "wall_s": round(wall, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
        "sweep": report.get("sweep", {}),
        "node_statuses": sorted(verdicts),
        "report_dir": str(report_dir),
    }


def wait_namespaces_gone(core: client.CoreV1Api, timeout_s: float = 600) -> float:
    """Untimed, between runs: until no namespace of any run (the suite's or the bare client's) is left, so
    the next run does not share the machine with the last one's deletion. Returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if not api_json(core.list_namespace, label_selector=MANAGED_BY_KEY).get("items"):
            break
        time.sleep(0.5)
    return round(time.monotonic() - started, 1)


def bare_sweep(api: client.ApiClient, size: int, max_parallel: int) -> dict[str, Any]:
    """The same sweep as the least any client must do (module docstring): wall seconds and pod phases."""
    core = client.CoreV1Api(api)
    settings = Settings()  # the suite's defaults: its image, GPU request and toleration
    namespace = f"bench-sweep-bare-{uuid.uuid4().hex[:6]}"
    data = make_bare_namespace(core, namespace, "gpu-probe-bare")  # not timed
    try:
        template = build_probe_pod(
            settings, namespace, namespace, "template", "gpu-probe-bare", probe_configmap_items(data)
        )
        nodes = [f"gpu-node-{i}" for i in range(1, size + 1)]
        names = {f"bare-{i}": node for i, node in enumerate(nodes, 1)}
        waiting = list(names)
        lock = threading.Lock()
        logs: dict[str, Future[bytes]] = {}
        pool = ThreadPoolExecutor(max_workers=8)

        def create(name: str) -> None:
            pod = copy.deepcopy(template)
            pod["metadata"]["name"] = name
            pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": names[name]}
            api_json(core.create_namespaced_pod, namespace, pod)

        def read_log(name: str) -> bytes:
            response = core.read_namespaced_pod_log(
                name, namespace, container="probe", _preload_content=False
            )
            return bytes(response.data)

        def start_next() -> None:
            with lock:
                name = waiting.pop(0) if waiting else None
            if name is not None:
                pool.submit(create, name)

        def ended(seen: Seen) -> str | None:
            phase = (seen.obj.get("status") or {}).get("phase")
            if phase not in ("Succeeded", "Failed"):
                return None
            logs[seen.name] = pool.submit(read_log, seen.name)
            start_next()
            return str(phase)

        started = time.perf_counter()
        for _ in range(min(max_parallel, size)):
            start_next()
        waited = wait_for(
            Source(core.list_namespaced_pod, (namespace,), {"label_selector": run_selector(namespace)}),
            list(names),
            ended,
            new=Seen,
            timeout_s=600,
        )
        read = sum(1 for future in logs.values() if future.result())
        wall = time.perf_counter() - started
        pool.shutdown()
        return {
            "wall_s": round(wall, 2),
            "phases": dict(Counter(waited.verdicts.values())),
            "logs_read": read,
            "undecided": len(waited.undecided),
        }
    finally:
        core.delete_namespace(namespace, grace_period_seconds=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100,1000")
    parser.add_argument("--max-parallel", type=int, help="passed to the suite (default: the suite's)")
    parser.add_argument("--kubeconfig", help="default: the testbed's")
    parser.add_argument(
        "--no-bare", dest="bare", action="store_false", help="skip the bare client's sweep beside each size"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    kubeconfig = args.kubeconfig or testbed_state()["kubeconfig"]
    api = config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(api)
    max_parallel = args.max_parallel or Settings().max_parallel
    print(
        f"bench_sweep: sizes {sizes}, at most {max_parallel} pods at once, machine: {os.cpu_count()} CPUs, "
        f"{os.uname().nodename}",
        flush=True,
    )
    results = []
    for size in sizes:
        cleared = wait_namespaces_gone(core)
        bare = bare_sweep(api, size, max_parallel) if args.bare else None
        cleared += wait_namespaces_gone(core)
        result = run_sweep(size, max(sizes), args.max_parallel, kubeconfig)
        result["bare"], result["untimed_namespace_wait_s"] = bare, cleared
        results.append(result)
        base = results[0]
        timings = result["sweep"].get("timings", {})
        ratio = result["wall_s"] / base["wall_s"]
        print(
            f"{size:>5} nodes: suite {result['wall_s']:7.2f} s  ratio {ratio:5.2f}x  "
            f"peak RSS {result['peak_rss_mib']:6.1f} MiB  exit {result['exit']}  "
            f"node statuses {result['node_statuses']}",
            flush=True,
        )
        if bare is not None and base["bare"] is not None:
            bare_ratio = bare["wall_s"] / base["bare"]["wall_s"]
            print(
                f"        bare client {bare['wall_s']:7.2f} s  ratio {bare_ratio:6.2f}x  "
                f"suite/bare {result['wall_s'] / bare['wall_s']:5.2f}  pods {bare['phases']}  "
                f"logs read {bare['logs_read']}",
                flush=True,
            )
        probed = result["sweep"].get("probed")
        if probed != size:
            print(
                f"        INVALID: {probed} node(s) probed, not {size}: the node set changed during the run "
                "(a `testbed up` elsewhere reconciles it back to the default set)",
                flush=True,
            )
        print(f"        sweep phases: {json.dumps(timings)}", flush=True)
        print(f"        CPU seconds during the run: {json.dumps(result['cpu_s'])}", flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
