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
Nothing is asserted; the goal (1000 nodes within 3x of one) is judged from the printed ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100,1000")
    parser.add_argument("--max-parallel", type=int, help="passed to the suite (default: the suite's)")
    parser.add_argument("--kubeconfig", help="default: the testbed's")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    kubeconfig = args.kubeconfig or testbed_state()["kubeconfig"]
    print(f"bench_sweep: sizes {sizes}, machine: {os.cpu_count()} CPUs, {os.uname().nodename}", flush=True)
    results = []
    for size in sizes:
        result = run_sweep(size, max(sizes), args.max_parallel, kubeconfig)
        results.append(result)
        base = results[0]["wall_s"]
        timings = result["sweep"].get("timings", {})
        print(
            f"{size:>5} nodes: {result['wall_s']:7.2f} s  ratio {result['wall_s'] / base:5.2f}x  "
            f"peak RSS {result['peak_rss_mib']:6.1f} MiB  exit {result['exit']}  "
            f"node statuses {result['node_statuses']}",
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
