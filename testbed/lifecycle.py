"""up / down / status / env: the testbed's life cycle, shared by the CLI and the pytest fixture."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from testbed import argo as argo_workflows
from testbed import build, cluster, dra, gpuhost, hostcheck, versions
from testbed.build import fmt_duration, log
from testbed.errors import TestbedError
from testbed.minio import minio_ready, start_minio, wait_minio
from testbed.node import NodeOptions, NodeState, node_healthy, start_node, stop_node
from testbed.nodes import default_nodes
from testbed.recordings import recordings_dir
from testbed.state import Proc, State, is_alive, locked, start, state_dir, stop


@dataclass(frozen=True)
class Testbed:
    """What a client needs: the kubeconfig and the S3 environment."""

    kubeconfig: Path
    env: dict[str, str]
    recordings_dir: Path  # where the recording controller reads `<name>.log` from
    started_here: bool  # False when `up` found it already running
    real_node: str | None = None  # the node with a real kubelet (testbed/node.py), tainted REAL_NODE_TAINT
    probe_image: str | None = None  # an image present on the real node that runs the suite's probe

    __test__ = False


def client_env(state: State | None = None) -> dict[str, str]:
    """KUBECONFIG and the AWS_* variables for the running testbed (boto3 and kubectl read them)."""
    state = state or State.load()
    if state is None:
        raise TestbedError("the testbed is not running: start it with `python -m testbed up`")
    if not state.credentials_file:  # a GPU host runs no MinIO
        return {"KUBECONFIG": state.kubeconfig}
    creds = state.credentials()
    return {
        "KUBECONFIG": state.kubeconfig,
        "AWS_ENDPOINT_URL_S3": state.s3_endpoint,
        "AWS_ACCESS_KEY_ID": creds["access_key"],
        "AWS_SECRET_ACCESS_KEY": creds["secret_key"],
        "AWS_DEFAULT_REGION": state.region,
    }


def testbed_of(state: State, started_here: bool) -> Testbed:
    """The client's view of a running testbed."""
    node = NodeState.from_dict(state.real_node) if state.real_node else None
    return Testbed(
        Path(state.kubeconfig),
        client_env(state),
        Path(state.recordings_dir),
        started_here,
        real_node=node.name if node else None,
        probe_image=node.images.get("probe") if node else None,
    )


def kwok_pids(state: State) -> dict[str, int]:
    """The component PIDs kwokctl recorded for this cluster."""
    pid_dir = Path(state.kwok_workdir) / "clusters" / state.cluster_name / "pids"
    pids: dict[str, int] = {}
    for path in sorted(pid_dir.glob("*.pid")):
        try:
            pids[path.stem] = int(path.read_text().strip())
        except (OSError, ValueError):
            pids[path.stem] = -1
    return pids


def pid_alive(pid: int) -> bool:
    """Running and not a zombie (for PIDs kwokctl started, whose command lines we do not record)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def health(state: State) -> dict[str, bool]:
    """One line per part: is it running and answering?"""
    out = {f"{name} (pid {pid})": pid_alive(pid) for name, pid in kwok_pids(state).items()}
    if not out:
        out["kwok cluster"] = False
    out["kube-apiserver (API read)"] = cluster.apiserver_ready(Path(state.kubeconfig))
    for name, proc in state.procs.items():
        out[f"{name} (pid {proc.pid})"] = is_alive(proc)
    if state.s3_endpoint:
        out[f"minio {state.s3_endpoint}"] = minio_ready(state.s3_endpoint)
    if state.real_node:
        out.update(node_healthy(NodeState.from_dict(state.real_node)))
    return out


def real_node_wanted() -> bool:
    """The real node runs unless TESTBED_REAL_NODE=0 (e.g. a host where the kubelet cannot run)."""
    return os.environ.get("TESTBED_REAL_NODE", "1") != "0"


def up(gpu_nodes: int | None = None, gpu_host: gpuhost.GpuHost | None = None, argo: bool = False) -> Testbed:
    """Start the testbed, or reuse the running one; either way the nodes are made the wanted set.

    With `gpu_host`: the single-node GPU cluster of a real GPU host (testbed/gpuhost.py) instead.
    With `argo`: Argo Workflows' controller too (testbed/argo.py), started on a running testbed if missing.
    """
    testbed = _up(gpu_nodes, gpu_host)
    if argo:
        with locked():
            state = State.load()
            assert state is not None
            start_argo(state)
    return testbed


def start_argo(state: State) -> None:
    """Argo's controller (a host process in the state's procs: `down` stops it; its CRDs, RBAC and namespace
    go with the cluster, its executor image with the real node's containerd)."""
    running = state.procs.get(argo_workflows.PROC_NAME)
    if running is not None and is_alive(running):
        log(f"argo: workflow-controller already running (pid {running.pid})")
        return
    if not state.real_node:
        raise TestbedError("--argo needs the real node (TESTBED_REAL_NODE=0 runs none): its pods run there")
    with cluster.api(Path(state.kubeconfig)) as c:
        runtime = argo_workflows.start(c, Path(state.kubeconfig), state.real_node, state_dir() / "logs")
    state.procs[argo_workflows.PROC_NAME] = runtime.proc
    state.argo = {"executor_image": runtime.executor_image, "crds": runtime.crds}
    state.save()


def _up(gpu_nodes: int | None, gpu_host: gpuhost.GpuHost | None) -> Testbed:
    started = time.monotonic()
    with locked():
        state = State.load()
        if state is not None:
            checks = health(state)
            if gpu_host is not None or state.gpu_host:
                same = gpu_host is not None and gpuhost.same_host(state.gpu_host, gpu_host)
                checks["GPU host mode as asked (--gpu-host, --bin-dir, --python)"] = same
                if all(checks.values()) and gpu_host is not None:
                    return reuse_gpu_host(state, gpu_host, started)
            elif bool(state.real_node) != real_node_wanted():
                checks["real node as wanted (TESTBED_REAL_NODE)"] = False
            if all(checks.values()):
                gpu_count, changed = set_nodes(state, gpu_nodes)
                if changed:
                    with cluster.api(Path(state.kubeconfig)) as c:
                        cluster.wait_ready(c, state.nodes, gpu_count)
                    step(f"nodes set to {len(state.nodes)} ({gpu_count} with GPUs), all Ready", started)
                took = fmt_duration(time.monotonic() - started)
                log(f"testbed already running ({len(state.nodes)} nodes Ready); up took {took}")
                return testbed_of(state, started_here=False)
            bad = ", ".join(k for k, ok in checks.items() if not ok)
            log(f"found a broken testbed ({bad} not running): stopping what is left of it")
            _down(state)
        state = _start_gpu_host(gpu_host, started) if gpu_host else _start(gpu_nodes, started)
        return testbed_of(state, started_here=True)


def reuse_gpu_host(state: State, host: gpuhost.GpuHost, started: float) -> Testbed:
    """A running GPU host cluster: only the sharing configuration may change (the plugin pod rolls)."""
    if state.gpu_host.get("time_slicing") != host.time_slicing:
        with cluster.api(Path(state.kubeconfig)) as c:
            gpuhost.configure_gpus(c, host, plugin_image(state), state_dir() / "gpuhost")
        state.gpu_host = {**state.gpu_host, "time_slicing": host.time_slicing}
        state.save()
        step(f"time-slicing set to {host.time_slicing} replicas", started)
    log(f"GPU host cluster already running; up took {fmt_duration(time.monotonic() - started)}")
    return testbed_of(state, started_here=False)


def plugin_image(state: State) -> str:
    """The name (with its content tag) under which the node imported NVIDIA's device plugin image."""
    return str(state.real_node["images"]["nvidia-device-plugin"])


def _start_gpu_host(host: gpuhost.GpuHost, t0: float) -> State:
    """Control plane (kwokctl, no kwok controller) + the real node + NVIDIA's device plugin; no MinIO."""
    bindir = Path(host.bin_dir)
    gpuhost.check_bin_dir(bindir)
    libs = gpuhost.driver_libraries()  # fails early, before any cluster exists, on a host without a driver
    options = gpuhost.node_options(host, libs)  # fails early when the interpreter cannot import torch
    t = step("binaries ready", t0)
    hostcheck.save_baseline(hostcheck.snapshot())
    sdir = state_dir()
    shutil.rmtree(sdir, ignore_errors=True)
    sdir.mkdir(parents=True)
    state = State(
        cluster_name=cluster.CLUSTER_NAME,
        kwok_workdir=str(sdir / "kwok"),
        kubeconfig=str(sdir / "kubeconfig"),
        bin_dir=str(bindir),
        s3_endpoint="",
        credentials_file="",
        minio_data_dir="",
        started_at=time.time(),
        gpu_host={**host.to_dict(), "cdi_before": gpuhost.cdi_specs()},
    )
    state.save()
    try:
        cluster.create_cluster(
            bindir, Path(state.kwok_workdir), Path(state.kubeconfig), kwok_controller=False
        )
        t = step(
            f"control plane created (etcd, kube-apiserver, kube-scheduler, kube-controller-manager "
            f"{versions.KUBERNETES_VERSION})",
            t,
        )
        start_real_node(state, bindir, sdir, options)
        t = step(f"real node {host.node_name} Ready", t)
        log(libs.describe())
        state.gpu_host = {**state.gpu_host, "ld_conf": gpuhost.register_driver_libraries(libs)}
        state.save()
        with cluster.api(Path(state.kubeconfig)) as c:
            gpus = gpuhost.configure_gpus(c, host, plugin_image(state), sdir / "gpuhost")
        step(f"NVIDIA device plugin {gpuhost.DEVICE_PLUGIN_VERSION} Ready, nvidia.com/gpu={gpus}", t)
    except BaseException:
        log(f"start failed: state kept in {sdir}; run `python -m testbed down` to clean up")
        raise
    log(f"GPU host cluster up in {fmt_duration(time.monotonic() - t0)}")
    return state


def step(what: str, since: float) -> float:
    """Log a finished step with its time; returns the new reference time."""
    now = time.monotonic()
    log(f"{what} ({fmt_duration(now - since)})")
    return now


def _start(gpu_nodes: int | None, t0: float) -> State:
    bindir = build.ensure_built()
    t = step("binaries ready", t0)
    hostcheck.save_baseline(hostcheck.snapshot())  # what `check-clean` compares with after `down`
    sdir = state_dir()
    shutil.rmtree(sdir, ignore_errors=True)
    sdir.mkdir(parents=True)
    minio_proc, endpoint, creds_file, data_dir = start_minio(bindir / "minio", sdir, "us-east-1")
    state = State(
        cluster_name=cluster.CLUSTER_NAME,
        kwok_workdir=str(sdir / "kwok"),
        kubeconfig=str(sdir / "kubeconfig"),
        bin_dir=str(bindir),
        s3_endpoint=endpoint,
        credentials_file=creds_file,
        minio_data_dir=str(data_dir),
        procs={"minio": minio_proc},
        started_at=time.time(),
        recordings_dir=str(recordings_dir()),
    )
    state.save()  # from here on, `down` can clean up whatever the rest of `up` leaves behind
    try:
        cluster.create_cluster(bindir, Path(state.kwok_workdir), Path(state.kubeconfig))
        t = step(
            f"kwok cluster {cluster.CLUSTER_NAME} created (etcd, kube-apiserver, kube-scheduler, "
            f"kube-controller-manager {versions.KUBERNETES_VERSION}, kwok {versions.KWOK_VERSION})",
            t,
        )
        state.procs["recording-controller"] = start_controller(state, sdir)
        state.save()
        gpu_count, _ = set_nodes(state, gpu_nodes)
        t = step(f"{len(state.nodes)} nodes created ({gpu_count} with GPUs)", t)
        with cluster.api(Path(state.kubeconfig)) as c:
            cluster.apply_addons(c)
            t = step("nvidia RuntimeClass and device plugin DaemonSet applied", t)
            wait_controller(state.procs["recording-controller"], sdir / "controller.ready")
            cluster.wait_ready(c, state.nodes, gpu_count)
        t = step("nodes Ready, device plugin pods Ready, recording controller watching", t)
        wait_minio(minio_proc, endpoint)
        t = step(f"MinIO ready at {endpoint}", t)
        if real_node_wanted():
            start_real_node(state, bindir, sdir)
            step("real node Ready", t)
    except BaseException:
        log(
            f"start failed: state kept in {sdir} (logs in {sdir}/logs and {state.kwok_workdir}); "
            "run `python -m testbed down` to clean up"
        )
        raise
    log(f"testbed up in {fmt_duration(time.monotonic() - t0)}")
    return state


def start_real_node(state: State, bindir: Path, sdir: Path, options: NodeOptions | None = None) -> None:
    """The kubelet + containerd node (testbed/node.py), registered with the running control plane."""

    def remember(ns: NodeState) -> None:
        state.real_node = ns.to_dict()
        state.save()

    kwok_dir = Path(state.kwok_workdir)
    with cluster.api(Path(state.kubeconfig)) as c:
        ns = start_node(
            sdir,
            bindir,
            c,
            server=c.configuration.host,
            pki=cluster.pki_dir(kwok_dir),
            image_cache=versions.cache_root() / versions.version_key() / "images",
            options=options,
            on_state=remember,
        )
    remember(ns)


def set_nodes(state: State, gpu_nodes: int | None) -> tuple[int, bool]:
    """Make the nodes the default set (or N identical GPU nodes); returns (GPU node count, changed?)."""
    specs = default_nodes(gpu_nodes)
    with cluster.api(Path(state.kubeconfig)) as c:
        state.nodes, changed = cluster.reconcile_nodes(c, specs)
        dra.reconcile(c, specs)  # SIMULATED ResourceSlices for the kwok GPU nodes (testbed/dra.py)
    state.save()
    return sum(1 for s in specs if s.gpus), changed


def start_controller(state: State, sdir: Path) -> Proc:
    """The recording controller runs with this interpreter, so it has the same kubernetes client."""
    args = [
        sys.executable,
        "-m",
        "testbed.controller",
        "--kubeconfig",
        state.kubeconfig,
        "--cri-cache",
        str(sdir / "cri-logs"),
        "--ready-file",
        str(sdir / "controller.ready"),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    env["TESTBED_RECORDINGS_DIR"] = state.recordings_dir
    return start(args, sdir / "logs" / "recording-controller.log", env=env)


def wait_controller(proc: Proc, ready_file: Path, timeout: float = 60) -> None:
    """The controller touches its ready file after its first list of probe pods."""
    deadline = time.monotonic() + timeout
    while not ready_file.exists():
        if not is_alive(proc) or time.monotonic() > deadline:
            raise TestbedError(
                f"recording controller did not start; its log ({proc.log}):\n"
                + Path(proc.log).read_text(errors="replace")[-3000:]
            )
        time.sleep(0.1)


def down() -> bool:
    """Stop exactly what `up` started and remove the state. False when nothing was up."""
    with locked():
        state = State.load()
        if state is None:
            log("testbed is not running")
            return False
        _down(state)
        return True


def _down(state: State) -> None:
    t = time.monotonic()
    problems: list[str] = []
    if state.real_node:
        node = NodeState.from_dict(state.real_node)
        problems += stop_node(node)
        t = step(f"real node {node.name} stopped", t)
    if state.gpu_host:
        problems += gpuhost.remove_cdi_specs(state.gpu_host.get("cdi_before", []))
        if state.gpu_host.get("ld_conf"):
            problems += gpuhost.unregister_driver_libraries()
    for name, proc in state.procs.items():
        if stop(proc):
            log(f"stopped {name} (pid {proc.pid})")
    if (Path(state.kwok_workdir) / "clusters" / state.cluster_name).exists():
        try:
            cluster.delete_cluster(Path(state.bin_dir), Path(state.kwok_workdir), Path(state.kubeconfig))
            log(f"deleted kwok cluster {state.cluster_name}")
        except TestbedError as exc:
            problems.append(str(exc))
    shutil.rmtree(state.minio_data_dir, ignore_errors=True)
    if problems:
        raise TestbedError("; ".join(problems) + f" (state kept in {state_dir()})")
    shutil.rmtree(state_dir(), ignore_errors=True)
    step("testbed down", t)


def status() -> tuple[State | None, dict[str, bool]]:
    """The saved state and the health of each part."""
    state = State.load()
    return state, (health(state) if state else {})
