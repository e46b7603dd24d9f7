"""One REAL node next to the simulated ones: kubelet + containerd + runc + bridge CNI on this host.

`start_node` brings it up and registers it with the testbed's apiserver; `stop_node` undoes everything it did:
processes, mounts, the kubepods cgroups, the bridge, iptables rules (where iptables exists), the sysctls the
kubelet changed, and the host paths the kubelet and containerd insist on (/var/lib/kubelet/device-plugins,
/run/containerd/s, /var/log/containers, ...) when they did not exist before. Pods there really run: the image
is pulled from nothing (images are imported, testbed/images.py), the probe's exit code, the runtime's error
messages and the kubelet's device allocation are the real ones.

What differs between hosts is a parameter (`NodeOptions`) or detected (`HostFacts`): cgroup v1 or v2,
whether iptables exists, which device plugin runs (this machine: the project's FAKE GPU device plugin in a
DaemonSet; a GPU host: the real NVIDIA plugin as a host process, started by the caller), and which paths go
into the probe image. The lead's GPU-host mode (testbed/gpuhost.py) reuses `start_node`/`stop_node`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from testbed import images
from testbed.build import log, pause_version
from testbed.errors import TestbedError
from testbed.nodes import GPU_RESOURCE
from testbed.state import Proc, is_alive, start, stop

REAL_NODE_NAME = "real-node"
REAL_NODE_LABEL = "testbed.k8s-gpu-acceptance.io/real-node"
# Only pods that tolerate this land on the real node: default suite runs and kwok self-tests never do.
REAL_NODE_TAINT = {"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}
BRIDGE = "kgacni0"  # our own bridge name (a host may have a cni0 of its own)
POD_SUBNET = "10.213.0.0/24"
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")  # the kubelet uses it whatever its --root-dir
FAKE_PLUGIN_NAME = "testbed-fake-nvidia-device-plugin"  # the suite finds plugins by "nvidia-device-plugin"
# Sysctls the kubelet (protectKernelDefaults: false) and the bridge plugin (isGateway) set.
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv6.conf.all.forwarding",
)
# Host paths the kubelet, containerd, its shim and CNI create whatever they are configured to use.
HOST_PATHS = (
    "/var/lib/kubelet",
    "/run/containerd",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/var/run/netns",
    "/run/netns",
    "/etc/cni",
    "/opt/cni",
    "/opt/containerd",
    "/var/lib/containerd",
    "/run/nri",
)
IPTABLES = ("iptables", "ip6tables")


@dataclass(frozen=True)
class HostFacts:
    """What the node's configuration depends on, read from this host."""

    cgroup_version: int
    iptables: bool
    node_ip: str

    @classmethod
    def detect(cls, node_ip: str | None = None) -> HostFacts:
        """cgroup2fs at /sys/fs/cgroup means v2; iptables is optional (the H100 VM has none)."""
        fstype = subprocess.run(
            ["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True, check=False
        ).stdout.strip()
        return cls(
            cgroup_version=2 if fstype == "cgroup2fs" else 1,
            iptables=shutil.which("iptables") is not None,
            node_ip=node_ip or primary_ip(),
        )


def primary_ip() -> str:
    """The default route's source address (a UDP connect sends nothing); else the first global one."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.255", 9))
        address: str = sock.getsockname()[0]
        if not address.startswith("127."):
            return address
    # No default route (a GPU host without network): the host's own addresses from the kernel's FIB (no
    # `ip` binary needed, the H100 VM has none), else loopback: the apiserver reaches the kubelet there.
    with contextlib.suppress(OSError):
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for previous, line in itertools.pairwise(lines):
            if line.strip() == "/32 host LOCAL":
                address = previous.split()[-1]
                if not address.startswith("127."):
                    return address
    log("no IPv4 address besides loopback: the kubelet's node IP is 127.0.0.1")
    return "127.0.0.1"


RTM_DELLINK, NLM_F_REQUEST, NLM_F_ACK, NLMSG_ERROR = 17, 1, 4, 2


def delete_link(name: str) -> str | None:
    """Delete a network link (the cni0 bridge) through rtnetlink; returns an error text, None when done.

    A netlink message rather than `ip link delete`: the GPU host has no iproute2.
    """
    try:
        index = int(Path(f"/sys/class/net/{name}/ifindex").read_text())
    except (OSError, ValueError) as exc:
        return f"no link {name}: {exc}"
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0)  # struct ifinfomsg
    header = struct.pack("=LHHLL", 16 + len(body), RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.send(header + body)
        reply = sock.recv(4096)
    if struct.unpack_from("=H", reply, 4)[0] == NLMSG_ERROR:
        error = struct.unpack_from("=i", reply, 16)[0]
        if error:
            return f"deleting link {name}: {os.strerror(-error)}"
    return None


@dataclass(frozen=True)
class NodeOptions:
    """What a caller chooses about the real node (the defaults are this CPU machine's)."""

    name: str = REAL_NODE_NAME
    fake_gpus: int = 4  # FAKE nvidia.com/gpu devices; 0: no fake plugin (a GPU host runs the real one)
    probe_paths: tuple[str, ...] = ()  # more host paths for the probe image (a GPU host: its torch venv)
    probe_python: str = "/usr/bin/python3"  # the probe image's python3 (a GPU host: the venv's, with torch)
    stream_probe_image: bool = False  # gigabytes (a torch environment): stream it into containerd
    node_ip: str | None = None
    ready_timeout_s: float = 120.0
    # REAL_NODE_TAINT keeps every pod that does not ask for the real node off it (kwok self-tests, default
    # suite runs); a single-node GPU host may register without it.
    taints: tuple[dict[str, str], ...] = (REAL_NODE_TAINT,)
    labels: tuple[tuple[str, str], ...] = ((REAL_NODE_LABEL, "true"),)
    extra_images: tuple[tuple[str, images.ImageSpec], ...] = ()  # (role, spec): e.g. a real plugin's image


@dataclass
class NodeState:
    """What `start_node` did, saved in the testbed state so that `stop_node` undoes exactly that."""

    name: str
    dir: str
    bin_dir: str
    containerd_address: str
    kubelet_port: int
    cgroup_version: int
    iptables: bool
    node_ip: str
    images: dict[str, str] = field(default_factory=dict)  # role -> image name
    procs: dict[str, Proc] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)  # values before the node started
    absent_paths: list[str] = field(default_factory=list)  # HOST_PATHS that did not exist before
    iptables_before: dict[str, list[str]] = field(default_factory=dict)
    bridge_existed: bool = False
    cgroups_before: list[str] = field(default_factory=list)  # kubepods* cgroups that existed before
    device_plugin_files_before: list[str] = field(default_factory=list)
    fake_gpus: int = 0

    def to_dict(self) -> dict[str, Any]:
        """For state.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeState:
        """From state.json."""
        data = dict(data)
        data["procs"] = {k: Proc(**v) for k, v in data.get("procs", {}).items()}
        return cls(**data)


# --- host state: sysctls, paths, iptables, mounts, cgroups --------------------------------------------------


def read_sysctls(names: Sequence[str] = SYSCTLS) -> dict[str, str]:
    """Current values of the sysctls the node may change (missing ones are left out)."""
    values = {}
    for name in names:
        with contextlib.suppress(OSError):
            values[name] = Path("/proc/sys", *name.split(".")).read_text().strip()
    return values


def restore_sysctls(before: dict[str, str]) -> list[str]:
    """Write back every value that differs; returns what could not be restored."""
    problems = []
    for name, value in before.items():
        path = Path("/proc/sys", *name.split("."))
        try:
            if path.read_text().strip() != value:
                path.write_text(value + "\n")
                log(f"  restored sysctl {name}={value}")
        except OSError as exc:
            problems.append(f"sysctl {name}: {exc}")
    return problems


def iptables_rules() -> dict[str, list[str]]:
    """`iptables -S` per table and family (empty where iptables does not exist)."""
    rules: dict[str, list[str]] = {}
    for binary in IPTABLES:
        if shutil.which(binary) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            proc = subprocess.run(
                [binary, "-w", "-t", table, "-S"], capture_output=True, text=True, check=False
            )
            if proc.returncode == 0:
                rules[f"{binary}/{table}"] = proc.stdout.splitlines()
    return rules


def restore_iptables(before: dict[str, list[str]]) -> list[str]:
    """Delete the rules and chains added since `before` (kubelet's KUBE-* chains, the bridge's CNI-*)."""
    problems = []
    for key, now in iptables_rules().items():
        binary, table = key.split("/")
        old = set(before.get(key, []))
        added = [r for r in now if r not in old]
        for rule in (r for r in added if r.startswith("-A ")):
            args = ["-D", *rule.split()[1:]]
            proc = subprocess.run(
                [binary, "-w", "-t", table, *args], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                problems.append(f"{binary} -t {table} {' '.join(args)}: {proc.stderr.strip()}")
        for rule in (r for r in added if r.startswith("-N ")):
            chain = rule.split()[1]
            for op in ("-F", "-X"):
                subprocess.run([binary, "-w", "-t", table, op, chain], capture_output=True, check=False)
    return problems


def mount_points() -> list[str]:
    """Every mount point of this mount namespace, in /proc/self/mountinfo order."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        points.append(point)
    return points


def unmount_under(roots: Sequence[str]) -> list[str]:
    """Unmount everything mounted at or below these directories, deepest first; returns the failures."""
    problems = []
    prefixes = [r.rstrip("/") for r in roots]
    for point in sorted(
        {p for p in mount_points() if any(p == r or p.startswith(r + "/") for r in prefixes)},
        key=lambda p: p.count("/"),
        reverse=True,
    ):
        proc = subprocess.run(["umount", point], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            lazy = subprocess.run(["umount", "-l", point], capture_output=True, text=True, check=False)
            if lazy.returncode != 0:
                problems.append(f"umount {point}: {proc.stderr.strip()}")
    return problems


def cgroup_roots() -> list[Path]:
    """Every cgroup hierarchy's mount point (v1: one per controller set, plus named ones; v2: one)."""
    roots = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] in ("cgroup", "cgroup2"):
            roots.append(Path(left.split()[4]))
    return roots


def kubepods_cgroups() -> list[Path]:
    """The cgroups the kubelet made for pods (cgroupfs driver: `kubepods` at each hierarchy's root)."""
    return [d for root in cgroup_roots() for d in root.glob("kubepods*") if d.is_dir()]


def cgroup_pids(cgroup: Path) -> set[int]:
    """Every process in this cgroup or below it."""
    pids: set[int] = set()
    for procs in cgroup.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(p) for p in procs.read_text().split())
    return pids


def remove_cgroup_tree(cgroup: Path) -> list[str]:
    """rmdir bottom-up (a cgroup directory can only be removed empty of children and processes)."""
    problems = []
    for directory in sorted(
        (d for d in cgroup.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True
    ):
        with contextlib.suppress(FileNotFoundError):
            try:
                directory.rmdir()
            except OSError as exc:
                problems.append(f"rmdir {directory}: {exc}")
    try:
        cgroup.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        problems.append(f"rmdir {cgroup}: {exc}")
    return problems


def link_exists(name: str) -> bool:
    """Is there a network interface of that name?"""
    return Path("/sys/class/net", name).exists()


def processes_with_exe(exe: Path) -> list[int]:
    """PIDs whose executable is exactly this file (our shims: found by their binary, stopped by PID)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "exe") == str(exe):
                    found.append(int(entry.name))
    return found


# --- configuration files ------------------------------------------------------------------------------------


def containerd_config(ns: NodeState, sandbox_image: str) -> str:
    """containerd 2.x (config version 3): our own root/state/socket, runc from the bin dir, CNI and CDI on.

    restrict_oom_score_adj: a VM without CAP_SYS_RESOURCE refuses lower oom_score_adj values (runc then fails
    "failed to update /proc/self/oom_score_adj: Permission denied"); harmless where the capability exists.
    """
    d = Path(ns.dir)
    bindir = Path(ns.bin_dir)
    return f"""version = 3
root = '{d}/containerd/root'
state = '{d}/containerd/state'
disabled_plugins = ['io.containerd.nri.v1.nri']

[grpc]
  address = '{ns.containerd_address}'

[ttrpc]
  address = '{ns.containerd_address}.ttrpc'

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = '{d}/containerd/opt'

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{sandbox_image}'

  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    cdi_spec_dirs = ['/etc/cdi', '/var/run/cdi']
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '{bindir}/runc'
          Root = '{d}/runc'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['{bindir}/cni']
      conf_dir = '{d}/cni/net.d'
"""


def cni_config(ns: NodeState) -> dict[str, Any]:
    """Bridge + host-local (a loopback-only config cannot give pod sandboxes a network); masquerading and
    portmap only where iptables exists (both call it)."""
    plugins: list[dict[str, Any]] = [
        {
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": True,
            "ipMasq": ns.iptables,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_SUBNET}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": f"{ns.dir}/cni/ipam",
            },
        }
    ]
    if ns.iptables:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    return {"cniVersion": "1.0.0", "name": "k8s-gpu-acceptance", "plugins": plugins}


def kubelet_config(
    ns: NodeState, ca_file: Path, taints: Sequence[dict[str, str]] = (REAL_NODE_TAINT,)
) -> dict[str, Any]:
    """KubeletConfiguration: cgroupfs driver, oomScoreAdj 0 (see containerd_config), no eviction surprises on
    a busy disk, our own pod-log dir, x509 + webhook authentication for the apiserver's log/exec requests."""
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": ns.node_ip,
        "port": ns.kubelet_port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{ns.containerd_address}",
        "oomScoreAdj": 0,
        "podLogsDir": f"{ns.dir}/pod-logs",
        "registerWithTaints": [dict(t) for t in taints],
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "failSwapOn": False,
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf" if Path("/etc/resolv.conf").exists() else "",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusUpdateFrequency": "1s",  # the fake plugin's GPUs show up in allocatable sooner
        "serializeImagePulls": False,
    }
    if ns.cgroup_version == 1:
        config["failCgroupV1"] = False  # kubelet 1.36 refuses cgroup v1 unless told otherwise
    return config


def kubelet_kubeconfig(server: str, ca: Path, cert: Path, key: Path) -> str:
    """The kubelet's credentials: a client certificate system:node:<name> in group system:nodes (the Node
    authorizer and NodeRestriction then apply to it as to any kubelet)."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "testbed", "cluster": {"server": server, "certificate-authority": str(ca)}}
            ],
            "users": [{"name": "kubelet", "user": {"client-certificate": str(cert), "client-key": str(key)}}],
            "contexts": [{"name": "kubelet", "context": {"cluster": "testbed", "user": "kubelet"}}],
            "current-context": "kubelet",
        }
    )


def node_client_cert(pki: Path, out: Path, node: str) -> tuple[Path, Path]:
    """Sign a kubelet client certificate with the testbed's CA (kwokctl's pki) using openssl.

    Without openssl (a minimal GPU host), the kubelet uses kwokctl's admin certificate instead: it then
    registers as a cluster admin, not as system:node:<name> (the Node authorizer's identity); said in the log.
    """
    if shutil.which("openssl") is None:
        log("no openssl: the kubelet authenticates with the admin certificate (apt-get install openssl)")
        return pki / "admin.crt", pki / "admin.key"
    out.mkdir(parents=True, exist_ok=True)
    key, csr, cert = out / "kubelet.key", out / "kubelet.csr", out / "kubelet.crt"
    steps = [
        ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
        ["openssl", "req", "-new", "-key", str(key), "-subj", f"/O=system:nodes/CN=system:node:{node}",
         "-out", str(csr)],
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"),
         "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "30", "-out", str(cert)],
    ]  # fmt: skip
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise TestbedError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")
    os.chmod(key, 0o600)
    return cert, key


def fake_device_plugin_daemonset(node: str, image: str, gpus: int) -> dict[str, Any]:
    """The FAKE GPU device plugin as a DaemonSet on the real node only (so the suite's device_plugin layer,
    which wants a Ready plugin pod on every GPU node, judges it as it judges a real one)."""
    labels = {"app.kubernetes.io/name": "fake-gpu-device-plugin", "app.kubernetes.io/part-of": "testbed"}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": FAKE_PLUGIN_NAME,
            "namespace": "kube-system",
            "labels": labels,
            "annotations": {"testbed.k8s-gpu-acceptance.io/fake": "FAKE devices: no GPU, no device nodes"},
        },
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": [{"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
                    "priorityClassName": "system-node-critical",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {
                            "name": "plugin",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["/fake-gpu-device-plugin", f"--devices={gpus}"],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                            "volumeMounts": [{"name": "device-plugin", "mountPath": str(DEVICE_PLUGIN_DIR)}],
                        }
                    ],
                    "volumes": [{"name": "device-plugin", "hostPath": {"path": str(DEVICE_PLUGIN_DIR)}}],
                },
            },
        },
    }


# --- start / stop ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    """Time one start-up step (the CI log shows where `up` spends its seconds)."""
    started = time.monotonic()
    yield
    log(f"  real node: {what} ({time.monotonic() - started:.1f}s)")


def wait_until(
    check: Any, what: str, timeout: float, proc: Proc | None = None, interval: float = 0.1
) -> None:
    """Poll a local condition (a socket, a CLI answer: nothing to watch) with a deadline; a dead process ends
    the wait at once with its log."""
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and not is_alive(proc):
            raise TestbedError(
                f"{what}: {Path(proc.exe).name} exited; its log ({proc.log}):\n{tail(proc.log)}"
            )
        if time.monotonic() > deadline:
            raise TestbedError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def tail(path: str, lines: int = 25) -> str:
    """The end of a log file, for error messages."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def image_specs(bindir: Path, options: NodeOptions) -> dict[str, images.ImageSpec]:
    """The images the node needs, by role."""
    specs = {
        "pause": images.pause_image_spec(bindir / "pause", pause_version()),
        "probe": dataclasses.replace(
            images.probe_image_spec(options.probe_paths, options.probe_python),
            stream=options.stream_probe_image,
        ),
    }
    if options.fake_gpus:
        specs["fake-device-plugin"] = images.device_plugin_image_spec(bindir / "fake-gpu-device-plugin")
    specs.update(dict(options.extra_images))
    return specs


def start_node(
    sdir: Path,
    bindir: Path,
    api_client: client.ApiClient,
    server: str,
    pki: Path,
    image_cache: Path,
    options: NodeOptions | None = None,
    on_state: Any = None,
) -> NodeState:
    """Start containerd and the kubelet, import the images, register the node and wait until it is Ready
    (and, with the fake plugin, advertises its GPUs). `on_state(ns)` is called whenever there is more to undo,
    so that a failed start can still be stopped cleanly."""
    options = options or NodeOptions()
    facts = HostFacts.detect(options.node_ip)
    ndir = sdir / "node"
    ndir.mkdir(parents=True, exist_ok=True)
    address = str(ndir / "containerd.sock")
    if len(address) > 100:
        raise TestbedError(f"containerd socket path too long for a unix socket ({len(address)}): {address}")
    from testbed.state import free_port

    ns = NodeState(
        name=options.name,
        dir=str(ndir),
        bin_dir=str(bindir),
        containerd_address=address,
        kubelet_port=free_port(),
        cgroup_version=facts.cgroup_version,
        iptables=facts.iptables,
        node_ip=facts.node_ip,
        sysctls=read_sysctls(),
        absent_paths=[p for p in HOST_PATHS if not os.path.lexists(p)],
        iptables_before=iptables_rules(),
        bridge_existed=link_exists(BRIDGE),
        cgroups_before=[str(c) for c in kubepods_cgroups()],
        device_plugin_files_before=sorted(os.listdir(DEVICE_PLUGIN_DIR))
        if DEVICE_PLUGIN_DIR.is_dir()
        else [],
        fake_gpus=options.fake_gpus,
    )
    notify = on_state or (lambda _ns: None)
    notify(ns)
    log(
        f"real node {ns.name}: cgroup v{ns.cgroup_version}, iptables {'yes' if ns.iptables else 'no'}, "
        f"node IP {ns.node_ip}"
    )
    with _step("images written"):
        built = {
            role: images.build_image(spec, image_cache) for role, spec in image_specs(bindir, options).items()
        }
        ns.images = {role: b.name for role, b in built.items()}
    for sub in ("logs", "cni/net.d", "cni/ipam", "pod-logs", "kubelet", "runc", "containerd"):
        (ndir / sub).mkdir(parents=True, exist_ok=True)
    (ndir / "containerd.toml").write_text(containerd_config(ns, ns.images["pause"]))
    (ndir / "cni/net.d/10-k8s-gpu-acceptance.conflist").write_text(json.dumps(cni_config(ns), indent=2))
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    with _step(f"containerd {address}"):
        ns.procs["containerd"] = start(
            [str(bindir / "containerd"), "--config", str(ndir / "containerd.toml")],
            ndir / "logs" / "containerd.log",
            env=env,
        )
        notify(ns)
        ctr = [str(bindir / "ctr"), "--address", address]
        wait_until(
            lambda: subprocess.run([*ctr, "version"], capture_output=True, check=False).returncode == 0,
            "containerd to answer",
            60,
            ns.procs["containerd"],
        )
    with _step(f"images imported ({', '.join(ns.images.values())})"):
        images.import_images(bindir / "ctr", address, built.values())
    with _step("kubelet client certificate"):
        cert, key = node_client_cert(pki, ndir / "pki", ns.name)
        (ndir / "kubelet.kubeconfig").write_text(kubelet_kubeconfig(server, pki / "ca.crt", cert, key))
        config = kubelet_config(ns, pki / "ca.crt", options.taints)
        (ndir / "kubelet.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with _step(f"kubelet registered {ns.name} and it is Ready"):
        labels = ",".join(f"{k}={v}" for k, v in options.labels)
        ns.procs["kubelet"] = start(
            [
                str(bindir / "kubelet"),
                f"--config={ndir / 'kubelet.yaml'}",
                f"--kubeconfig={ndir / 'kubelet.kubeconfig'}",
                f"--root-dir={ndir / 'kubelet'}",
                f"--hostname-override={ns.name}",
                f"--node-ip={ns.node_ip}",
                f"--node-labels={labels}",
                "--v=1",
            ],
            ndir / "logs" / "kubelet.log",
            env=env,
        )
        notify(ns)
        wait_node(api_client, ns, lambda n: node_is_ready(n), "Ready", options.ready_timeout_s)
    if options.fake_gpus:
        with _step(f"fake device plugin registered, {options.fake_gpus} FAKE {GPU_RESOURCE} allocatable"):
            apps = client.AppsV1Api(api_client)
            ds = fake_device_plugin_daemonset(ns.name, ns.images["fake-device-plugin"], options.fake_gpus)
            try:
                apps.create_namespaced_daemon_set("kube-system", ds)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                apps.replace_namespaced_daemon_set(FAKE_PLUGIN_NAME, "kube-system", ds)
            want = str(options.fake_gpus)
            wait_node(
                api_client,
                ns,
                lambda n: (n.status.allocatable or {}).get(GPU_RESOURCE) == want,
                f"{GPU_RESOURCE}={want} allocatable",
                options.ready_timeout_s,
            )
    return ns


def node_is_ready(node: client.V1Node) -> bool:
    """The kubelet's Ready condition."""
    return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))


def wait_node(api_client: client.ApiClient, ns: NodeState, done: Any, what: str, timeout: float) -> None:
    """Watch the node object until `done(node)`; a kubelet that exits ends the wait at once with its log."""
    core = client.CoreV1Api(api_client)
    deadline = time.monotonic() + timeout
    selector = f"metadata.name={ns.name}"
    kubelet = ns.procs.get("kubelet")
    while True:
        listed = core.list_node(field_selector=selector)
        if listed.items and done(listed.items[0]):
            return
        if kubelet is not None and not is_alive(kubelet):
            raise TestbedError(
                f"the kubelet exited before node {ns.name} was {what}; its log:\n{tail(kubelet.log)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TestbedError(
                f"node {ns.name} not {what} after {timeout:.0f}s; the kubelet's log:\n"
                + (tail(kubelet.log) if kubelet else "-")
            )
        # Short windows: the kubelet dying is only noticed between them.
        for event in watch.Watch().stream(
            core.list_node,
            field_selector=selector,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=max(1, int(min(remaining, 5))),
        ):
            if event["type"] != "DELETED" and done(event["object"]):
                return


def stop_node(ns: NodeState) -> list[str]:
    """Undo `start_node`, step by step; returns problems (each step runs even when an earlier one failed)."""
    problems: list[str] = []
    bindir = Path(ns.bin_dir)
    kubelet = ns.procs.get("kubelet")
    if kubelet is not None and stop(kubelet):
        log(f"  stopped kubelet (pid {kubelet.pid})")
    containerd = ns.procs.get("containerd")
    if containerd is not None and is_alive(containerd) and not (bindir / "crictl").exists():
        problems.append(f"no {bindir / 'crictl'}: pods not removed through the CRI (their netns may stay)")
    elif containerd is not None and is_alive(containerd):
        # Through the CRI, so that each sandbox's network is torn down by CNI and its netns unmounted.
        crictl = [
            str(bindir / "crictl"),
            "--runtime-endpoint",
            f"unix://{ns.containerd_address}",
            "--timeout",
            "30s",
        ]
        proc = subprocess.run(
            [*crictl, "rmp", "--all", "--force"], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            problems.append(f"crictl rmp --all --force: {proc.stderr.strip()}")
    if containerd is not None and stop(containerd):
        log(f"  stopped containerd (pid {containerd.pid})")
    for pid in processes_with_exe(bindir / "containerd-shim-runc-v2"):
        log(f"  stopping leftover shim pid {pid}")
        with contextlib.suppress(ProcessLookupError):
            stop(Proc(pid=pid, exe=str(bindir / "containerd-shim-runc-v2"), log=""), timeout=5)
    ours = [c for c in kubepods_cgroups() if str(c) not in ns.cgroups_before]
    for cgroup in ours:
        for pid in cgroup_pids(
            cgroup
        ):  # container processes a killed shim left behind (ours: in our kubepods)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    problems += unmount_under([ns.dir, *ns.absent_paths])
    for cgroup in ours:
        problems += remove_cgroup_tree(cgroup)
    if DEVICE_PLUGIN_DIR.is_dir() and "/var/lib/kubelet" not in ns.absent_paths:
        for name in set(os.listdir(DEVICE_PLUGIN_DIR)) - set(ns.device_plugin_files_before):
            (DEVICE_PLUGIN_DIR / name).unlink(missing_ok=True)
    if not ns.bridge_existed and link_exists(BRIDGE):
        error = delete_link(BRIDGE)
        if error:
            problems.append(error)
    if ns.iptables:
        problems += restore_iptables(ns.iptables_before)
    problems += restore_sysctls(ns.sysctls)
    for path in ns.absent_paths:
        if os.path.lexists(path):
            if any(p == path or p.startswith(path + "/") for p in mount_points()):
                problems.append(f"{path} still has mounts: not removed")
                continue
            shutil.rmtree(path, ignore_errors=True)
    return problems


def node_healthy(ns: NodeState) -> dict[str, bool]:
    """For `status` and the idempotent `up`: both processes still run."""
    return {f"real node {ns.name}: {name} (pid {p.pid})": is_alive(p) for name, p in ns.procs.items()}
