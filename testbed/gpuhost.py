"""A real single-node GPU cluster on a GPU host: the pieces that only a GPU host needs.

On a host with an NVIDIA driver and no container toolkit (the H100 VM: no registry, no network), the testbed
runs its real control plane and its real node (containerd + runc + kubelet, `testbed/node.py`), and instead of
the fake device plugin it runs the REAL NVIDIA device plugin (k8s-device-plugin, CDI strategy) as a
DaemonSet, with GPU Feature Discovery's labels. This module owns:

- building the NVIDIA binaries from Go modules here (nothing is downloaded on the GPU host),
- the bundle: every binary and image the GPU host needs, in one `tar.xz` small enough to travel,
- the device plugin DaemonSet and its image, GFD labels, and the time-slicing configuration.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import lzma
import os
import re
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from testbed import build, cluster, images, versions
from testbed.build import Component, fmt_duration, log, run_go, write_module
from testbed.errors import TestbedError
from testbed.node import NodeOptions

DEVICE_PLUGIN_VERSION = "v0.19.1"
# The device plugin's go.mod pins a pseudo-version of the toolkit whose checksum the proxy refuses; the
# released v1.19.0 is API-compatible for what the plugin uses (REFERENCE.md section 5).
DEVICE_PLUGIN_TOOLKIT_REPLACE = "v1.19.0"
CDI_HOOK_VERSION = "v1.20.2"

PINS: dict[str, str] = {"k8s-device-plugin": DEVICE_PLUGIN_VERSION, "nvidia-cdi-hook": CDI_HOOK_VERSION}


def cgo_env() -> dict[str, str]:
    """NVML is loaded with dlopen through cgo: these binaries link glibc (the GPU host has a newer one)."""
    env = build.go_env()
    env["CGO_ENABLED"] = "1"
    return env


def build_device_plugin(workdir: Path, out: Path) -> None:
    """nvidia-device-plugin and gpu-feature-discovery from one throwaway module (shared packages once)."""
    logfile = workdir / "build.log"
    module = "github.com/NVIDIA/k8s-device-plugin"
    toolkit = "github.com/NVIDIA/nvidia-container-toolkit"
    write_module(
        workdir,
        "nvidia-device-plugin",
        f"\nrequire {module} {DEVICE_PLUGIN_VERSION}\n\n"
        f"replace {toolkit} => {toolkit} {DEVICE_PLUGIN_TOOLKIT_REPLACE}\n",
    )
    pkgs = [f"{module}/cmd/nvidia-device-plugin", f"{module}/cmd/gpu-feature-discovery"]
    env = cgo_env()
    run_go(["get", *(f"{p}@{DEVICE_PLUGIN_VERSION}" for p in pkgs)], workdir, logfile, "resolve modules", env)
    ldflags = f"-s -w -X {module}/internal/info.version={DEVICE_PLUGIN_VERSION}"
    run_go(["build", "-ldflags", ldflags, "-o", f"{out}/", *pkgs], workdir, logfile, "go build plugin", env)


def build_cdi_hook(workdir: Path, out: Path) -> None:
    """nvidia-cdi-hook: the runtime runs it from the CDI spec (creates libcuda symlinks, ldconfig)."""
    workdir.mkdir(parents=True, exist_ok=True)
    module = "github.com/NVIDIA/nvidia-container-toolkit"
    env = cgo_env()
    env["GOBIN"] = str(out)
    ldflags = f"-s -w -X {module}/internal/info.version={CDI_HOOK_VERSION}"
    run_go(
        ["install", "-ldflags", ldflags, f"{module}/cmd/nvidia-cdi-hook@{CDI_HOOK_VERSION}"],
        workdir,
        workdir / "build.log",
        "go install nvidia-cdi-hook",
        env,
    )


COMPONENTS: tuple[Component, ...] = (
    Component(
        "nvidia-device-plugin",
        ("nvidia-device-plugin", "gpu-feature-discovery"),
        DEVICE_PLUGIN_VERSION,
        build_device_plugin,
    ),
    Component("nvidia-cdi-hook", ("nvidia-cdi-hook",), CDI_HOOK_VERSION.lstrip("v"), build_cdi_hook),
)


def nvidia_bin_dir() -> Path:
    """A cache of its own: a new NVIDIA pin never invalidates the (long) Kubernetes build."""
    digest = hashlib.sha256(repr(sorted(PINS.items())).encode()).hexdigest()[:8]
    return versions.cache_root() / f"nvidia-{digest}" / "bin"


def ensure_nvidia_built() -> Path:
    """Build the NVIDIA binaries that are missing or report another version; returns their directory."""
    bindir = nvidia_bin_dir()
    bindir.mkdir(parents=True, exist_ok=True)
    for c in COMPONENTS:
        found = {b: build.binary_version(bindir / b) for b in c.binaries if (bindir / b).is_file()}
        if all(c.expect in found.get(b, "") for b in c.binaries):
            log(f"cached {c.name}: " + "; ".join(f"{b}: {v}" for b, v in found.items()))
            continue
        log(f"build {c.name} ({', '.join(c.binaries)}) ...")
        started = time.monotonic()
        partial = bindir.parent / f"partial-{c.name}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        c.build(bindir.parent / "src" / c.name, partial)
        for b in c.binaries:  # moved in only when the whole step succeeded
            os.replace(partial / b, bindir / b)
        shutil.rmtree(partial, ignore_errors=True)
        got = {b: build.binary_version(bindir / b) for b in c.binaries}
        if not all(c.expect in v for v in got.values()):
            raise TestbedError(f"{c.name} was built but reports {got}, expected {c.expect!r}")
        log(f"built {c.name} in {fmt_duration(time.monotonic() - started)}: {got}")
    return bindir


# --- the real NVIDIA device plugin, as a DaemonSet on the real node ----------------------------------------

PLUGIN_REPOSITORY = "k8s-gpu-acceptance.local/nvidia-device-plugin"  # tag: version + content digest
PLUGIN_CONFIGMAP = "nvidia-device-plugin-config"
DRIVER_ROOT_CTR = "/driver-root"


def sharing_config(time_slicing_replicas: int) -> str:
    """The device plugin's (and GFD's) config file: time-slicing with N replicas, or no sharing (N <= 1).

    The same file format NVIDIA's Helm chart mounts (`config.map`); the plugin then advertises N
    `nvidia.com/gpu` per physical GPU and GFD labels the node `sharing-strategy=time-slicing`, `replicas=N`.
    """
    lines = ["version: v1", "flags:", "  migStrategy: none"]
    if time_slicing_replicas > 1:
        lines += [
            "sharing:",
            "  timeSlicing:",
            "    resources:",
            "    - name: nvidia.com/gpu",
            f"      replicas: {time_slicing_replicas}",
        ]
    return "\n".join(lines) + "\n"


# Where NVIDIA's plugin looks for libnvidia-ml.so.1 under its driver root (k8s-device-plugin v0.19.1,
# cmd/nvidia-device-plugin/root.go). Anywhere else it asks the container's own loader, which knows nothing of
# the host's: "CDI --device-list-strategy options are only supported on NVML-based systems" (the first run
# on the H100, whose driver lives in /usr/local/nvidia/lib64).
PLUGIN_LIBRARY_DIRS = (
    "/usr/lib64",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
)
# The toolkit's CDI generator finds libcuda.so through those directories or the root's ld.so.cache; a host
# that reaches its driver only through LD_LIBRARY_PATH gets this file (and `ldconfig`) until `down`.
LD_CONF = Path("/etc/ld.so.conf.d/k8s-gpu-acceptance-testbed.conf")


@dataclass(frozen=True)
class DriverLibraries:
    """Where the host's dynamic loader finds the NVIDIA driver's libraries, and whether ld.so.cache has it."""

    directory: str  # real path of the directory holding libnvidia-ml.so.1
    in_ld_cache: bool
    host_path: str = "/usr/bin:/bin"  # the host's PATH: where its own nvidia-smi is found first

    @property
    def nvml(self) -> str:
        """The host's libnvidia-ml.so.1."""
        return f"{self.directory}/libnvidia-ml.so.1"

    def plugin_env(self) -> list[dict[str, str]]:
        """The plugin container's environment: the host's PATH, LD_LIBRARY_PATH under the driver root.

        The CDI generator picks the driver's binaries (nvidia-smi, ...) from the directories on its own PATH
        (under the driver root) before the defaults; with the image's /usr/bin:/bin it mounted the H100
        host's /usr/bin/nvidia-smi, which could not start in the pod (ENOENT), while the host runs
        /usr/local/nvidia/bin/nvidia-smi. The host's PATH makes it mount what the host itself runs.
        """
        env = [{"name": "PATH", "value": self.host_path}]
        if self.directory not in PLUGIN_LIBRARY_DIRS:
            env.append({"name": "LD_LIBRARY_PATH", "value": DRIVER_ROOT_CTR + self.directory})
        return env

    def describe(self) -> str:
        """One line for `up`'s output."""
        cache = "in ld.so.cache" if self.in_ld_cache else "NOT in ld.so.cache"
        env = " ".join(f"{e['name']}={e['value']}" for e in self.plugin_env())
        return f"driver libraries in {self.directory} ({cache}); device plugin env {env}"


def loaded_library_path(name: str) -> Path | None:
    """Where the host's loader finds a library (ld.so.cache or LD_LIBRARY_PATH alike), read from our maps."""
    try:
        ctypes.CDLL(name)
    except OSError:
        return None
    stem = name.split(".so")[0] + ".so"
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5]).name.startswith(stem):
            return Path(fields[5])
    return None


def ld_cache_dirs(ldconfig_output: str) -> set[str]:
    """Directories (real paths) that `ldconfig -p` serves libraries from."""
    return {
        os.path.realpath(os.path.dirname(line.rsplit("=> ", 1)[1].strip()))
        for line in ldconfig_output.splitlines()
        if "=> " in line
    }


def ldconfig() -> str:
    """The host's ldconfig (Debian and Ubuntu keep it in /sbin, often off a non-root PATH)."""
    return shutil.which("ldconfig") or "/sbin/ldconfig"


def driver_libraries() -> DriverLibraries:
    """Find the driver's libraries as the host's own programs (nvidia-smi, torch) find them."""
    nvml = loaded_library_path("libnvidia-ml.so.1")
    if nvml is None:
        raise TestbedError(
            "this host's dynamic loader cannot find libnvidia-ml.so.1: install the NVIDIA driver, or add the "
            "directory that holds its libraries to /etc/ld.so.conf.d/ and run ldconfig"
        )
    proc = subprocess.run([ldconfig(), "-p"], capture_output=True, text=True, timeout=60, check=False)
    directory = os.path.realpath(nvml.parent)
    host_path = os.environ.get("PATH") or "/usr/bin:/bin"
    return DriverLibraries(directory, directory in ld_cache_dirs(proc.stdout), host_path)


def register_driver_libraries(libs: DriverLibraries) -> bool:
    """Put the driver's directory in ld.so.cache if it is not (the CDI generator reads it); True if we did."""
    if libs.in_ld_cache or libs.directory in PLUGIN_LIBRARY_DIRS:
        return False
    LD_CONF.write_text(
        f"# k8s-gpu-acceptance testbed (GPU host); removed by `python -m testbed down`\n{libs.directory}\n"
    )
    subprocess.run([ldconfig()], check=True, timeout=120)
    log(f"added {libs.directory} to ld.so.cache through {LD_CONF} (undone by down)")
    return True


def unregister_driver_libraries() -> list[str]:
    """Undo register_driver_libraries; returns problems."""
    try:
        LD_CONF.unlink(missing_ok=True)
        subprocess.run([ldconfig()], check=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return [f"cannot remove {LD_CONF} or rerun ldconfig: {exc}"]
    log(f"removed {LD_CONF}")
    return []


def device_plugin_daemonset(
    image: str,
    plugin_path: str,
    cdi_hook_path: str,
    config_digest: str,
    env: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """NVIDIA's own device plugin as its Helm chart runs it with the CDI strategy (`cdi-cri`).

    Privileged as in the chart's CDI mode (it reads every /dev/nvidia* and NVML through the host's driver
    root, mounted at /driver-root); the suite's probe pods never are. It writes its CDI spec to the host's
    /var/run/cdi, where containerd reads it when the kubelet allocates a GPU. The config digest in the pod
    template rolls the pod when the sharing configuration changes.
    """
    labels = {"name": "nvidia-device-plugin-ds", "app.kubernetes.io/name": "nvidia-device-plugin"}

    def host(name: str, path: str, kind: str = "Directory") -> dict[str, Any]:
        return {"name": name, "hostPath": {"path": path, "type": kind}}

    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": "nvidia-device-plugin-daemonset",
            "namespace": "kube-system",
            "labels": {**labels, "app.kubernetes.io/managed-by": "k8s-gpu-acceptance-testbed"},
        },
        "spec": {
            "selector": {"matchLabels": {"name": labels["name"]}},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"testbed.k8s-gpu-acceptance.io/config-digest": config_digest},
                },
                "spec": {
                    "priorityClassName": "system-node-critical",
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "nvidia-device-plugin-ctr",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": [plugin_path],
                            "args": [
                                "--device-list-strategy=cdi-cri",
                                f"--driver-root-ctr-path={DRIVER_ROOT_CTR}",
                                "--driver-root=/",
                                f"--nvidia-cdi-hook-path={cdi_hook_path}",
                                "--config-file=/config/config.yaml",
                                "--fail-on-init-error=true",
                            ],
                            "env": env or [],
                            "securityContext": {"privileged": True},
                            "volumeMounts": [
                                {"name": "device-plugin", "mountPath": "/var/lib/kubelet/device-plugins"},
                                {"name": "driver-root", "mountPath": DRIVER_ROOT_CTR, "readOnly": True},
                                {"name": "cdi-root", "mountPath": "/var/run/cdi"},
                                {"name": "config", "mountPath": "/config", "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [
                        host("device-plugin", "/var/lib/kubelet/device-plugins"),
                        host("driver-root", "/"),
                        host("cdi-root", "/var/run/cdi", "DirectoryOrCreate"),
                        {"name": "config", "configMap": {"name": PLUGIN_CONFIGMAP}},
                    ],
                },
            },
        },
    }


def gfd_labels(output: str) -> dict[str, str]:
    """GFD's output file (`key=value` lines, as NFD's local source reads it) as node labels.

    On a cluster NFD applies these; the GPU host runs no NFD, so the testbed applies GFD's own output.
    """
    labels: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("nvidia.com/"):
            labels[key] = value
    return labels


def config_digest(config: str) -> str:
    """Short digest of the plugin config: a new value in the pod template rolls the plugin pod."""
    return hashlib.sha256(config.encode()).hexdigest()[:12]


def apply_device_plugin(api_client: client.ApiClient, bindir: Path, replicas: int, image: str) -> str:
    """Create or update the plugin's ConfigMap and DaemonSet; returns the config text applied."""
    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    config = sharing_config(replicas)
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": PLUGIN_CONFIGMAP, "namespace": "kube-system"},
        "data": {"config.yaml": config},
    }
    cluster.create_or_replace(
        lambda: core.create_namespaced_config_map("kube-system", configmap),
        lambda: core.replace_namespaced_config_map(PLUGIN_CONFIGMAP, "kube-system", configmap),
    )
    ds = device_plugin_daemonset(
        image,
        str(bindir / "nvidia-device-plugin"),
        str(bindir / "nvidia-cdi-hook"),
        config_digest(config),
        driver_libraries().plugin_env(),
    )
    name = ds["metadata"]["name"]
    cluster.create_or_replace(
        lambda: apps.create_namespaced_daemon_set("kube-system", ds),
        lambda: apps.replace_namespaced_daemon_set(name, "kube-system", ds),
    )
    return config


# Waiting reasons of the plugin's container that no amount of waiting fixes.
PLUGIN_BAD_STATES = (
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
    "CrashLoopBackOff",
    "CreateContainerError",
    "CreateContainerConfigError",
    "RunContainerError",
    "InvalidImageName",
)
PLUGIN_SELECTOR = "name=nvidia-device-plugin-ds"


def plugin_pod_problem(
    core: client.CoreV1Api, namespace: str = "kube-system", selector: str = PLUGIN_SELECTOR
) -> str | None:
    """The plugin pod's known-bad state with its message (and the log's end when it crashed), else None."""
    for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
        for cs in (pod.status and pod.status.container_statuses) or []:
            waiting = cs.state and cs.state.waiting
            if waiting and waiting.reason in PLUGIN_BAD_STATES:
                detail = f"{pod.metadata.name}: {waiting.reason}: {waiting.message or ''}".strip()
                if waiting.reason == "CrashLoopBackOff":
                    with contextlib.suppress(ApiException):
                        log_tail = core.read_namespaced_pod_log(
                            pod.metadata.name, namespace, previous=True, tail_lines=15
                        )
                        detail += f"\n{log_tail}"
                return detail
    return None


def wait_gpus_advertised(
    api_client: client.ApiClient,
    node: str,
    expected: int,
    timeout: float,
    namespace: str = "kube-system",
    selector: str = PLUGIN_SELECTOR,
) -> None:
    """Until the node's allocatable nvidia.com/gpu is `expected` (the plugin registered and listed them).

    Woken by the plugin pod's watch (and re-checked at least every 5 s, since the node's capacity arrives
    through the kubelet's status updates); a plugin pod in a state no wait fixes ends it at once, with why.
    """
    core = client.CoreV1Api(api_client)
    deadline = time.monotonic() + timeout
    while True:
        found = (core.read_node(node).status.allocatable or {}).get("nvidia.com/gpu")
        if found == str(expected):
            return
        problem = plugin_pod_problem(core, namespace, selector)
        if problem:
            raise TestbedError(f"the NVIDIA device plugin pod cannot run: {problem}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TestbedError(
                f"node {node} advertises nvidia.com/gpu={found} after {timeout:.0f}s, expected {expected}: "
                f"kubectl -n {namespace} logs -l {selector}"
            )
        stream = watch.Watch().stream(
            core.list_namespaced_pod,
            namespace,
            label_selector=selector,
            timeout_seconds=max(1, int(min(remaining, 5))),
        )
        for _ in stream:  # any change of the plugin pod: check again
            break


def gfd_command(bindir: Path, output: Path, config_file: Path) -> list[str]:
    """GFD once, as a host process, into a labels file.

    Off the NodeFeature API (its default needs an in-cluster client: "KUBERNETES_SERVICE_HOST and
    KUBERNETES_SERVICE_PORT must be defined", the third H100 run) and with the host's own root as driver root.
    """
    return [
        str(bindir / "gpu-feature-discovery"),
        "--oneshot",
        "--no-timestamp",
        "--use-node-feature-api=false",
        "--driver-root-ctr-path=/",
        f"--output-file={output}",
        f"--config-file={config_file}",
    ]


def apply_gfd_labels(
    api_client: client.ApiClient, node: str, bindir: Path, config: str, work: Path
) -> dict[str, str]:
    """Run GPU Feature Discovery once on this host and put its labels on the node (NFD's job elsewhere)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "gfd-config.yaml").write_text(config)
    output = work / "gfd-labels"
    proc = subprocess.run(
        gfd_command(bindir, output, work / "gfd-config.yaml"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise TestbedError(f"gpu-feature-discovery failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    labels = gfd_labels(output.read_text())
    if not labels:
        raise TestbedError(f"gpu-feature-discovery wrote no nvidia.com/ labels to {output}")
    core = client.CoreV1Api(api_client)
    # Labels GFD no longer reports (e.g. replicas after sharing is turned off) are removed: None deletes.
    current = core.read_node(node).metadata.labels or {}
    stale = {k: None for k in current if k.startswith("nvidia.com/") and k not in labels}
    core.patch_node(node, {"metadata": {"labels": {**stale, **labels}}})
    return labels


# --- the bundle: what travels to a GPU host with no network -----------------------------------------------

# Node and control-plane binaries from the testbed's bin dir (kwok's controller stays home: the GPU host has
# no simulated nodes, and kwokctl runs with --disable kwok-controller; MinIO too: no S3 there).
HOST_BINARIES = (
    "kube",
    "crictl",  # `down` removes the pods through the CRI, so CNI tears their networks down
    "etcd",
    "kwokctl",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "pause",
)
KUBE_LINKS = ("kube-apiserver", "kube-scheduler", "kube-controller-manager", "kubelet", "kubectl")
NVIDIA_BINARIES = ("nvidia-device-plugin", "gpu-feature-discovery", "nvidia-cdi-hook")
MANIFEST = "bundle.json"


@dataclass(frozen=True)
class Member:
    """One binary in the bundle: its path under bin/, its xz file, and the digest of its raw bytes."""

    name: str
    xz: str
    sha256: str
    size: int


def bundle_members(bindir: Path, nvidia_bindir: Path) -> list[tuple[str, Path]]:
    """(name under bin/, source file) for everything the GPU host runs."""
    cni = sorted(p for p in (bindir / "cni").iterdir() if p.is_file())
    members = [(n, bindir / n) for n in HOST_BINARIES] + [(f"cni/{p.name}", p) for p in cni]
    members += [(n, nvidia_bindir / n) for n in NVIDIA_BINARIES]
    missing = [str(path) for _, path in members if not path.is_file()]
    if missing:
        raise TestbedError(f"cannot bundle: not built: {', '.join(missing)} (run `python -m testbed build`)")
    return members


def compress(source: Path, cache: Path) -> Member:
    """xz -9 one binary, cached by content (a rebuilt binary is compressed again, an unchanged one not)."""
    digest = images.sha256_file(source)
    out = cache / f"{digest}.xz"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            subprocess.run(["xz", "-9", "-T1", "-c", str(source)], stdout=fh, check=True)
        os.replace(tmp, out)
    return Member(name=source.name, xz=out.name, sha256=digest, size=source.stat().st_size)


def make_bundle(out_dir: Path, max_part_mib: float = 58.0) -> list[Path]:
    """Compress every member (2 at a time) and pack them into parts of at most `max_part_mib` each.

    The device tool carries 64 MiB a call (the repository included), and what one call writes stays on the
    machine for the next: so the host receives part after part and `unpack` reads them all. Each part holds
    a `bundle.json` naming its members, their raw digests (checked after decompressing) and the symlinks.
    """
    if shutil.which("xz") is None:
        raise TestbedError("xz is not installed: apt-get install xz-utils")
    started = time.monotonic()
    members = bundle_members(versions.bin_dir(), nvidia_bin_dir())
    cache = versions.cache_root() / "bundle-xz"
    cache.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda m: compress(m[1], cache), members))
    packed = [dataclasses.replace(d, name=name) for (name, _), d in zip(members, done, strict=True)]
    packed.sort(key=lambda m: -(cache / m.xz).stat().st_size)
    parts: list[list[Member]] = []
    sizes: list[int] = []
    limit = int(max_part_mib * 2**20)
    for member in packed:  # first fit, largest first
        size = (cache / member.xz).stat().st_size
        for i, used in enumerate(sizes):
            if used + size <= limit:
                parts[i].append(member)
                sizes[i] += size
                break
        else:
            if size > limit:
                raise TestbedError(
                    f"{member.name} alone is {size / 2**20:.1f} MiB xz: over {max_part_mib} MiB"
                )
            parts.append([member])
            sizes.append(size)
    shutil.rmtree(out_dir, ignore_errors=True)
    dirs = []
    for i, part in enumerate(parts, 1):
        pdir = out_dir / f"part-{i}"
        pdir.mkdir(parents=True)
        for member in part:
            shutil.copy2(cache / member.xz, pdir / member.xz)
        manifest = {
            "members": [dataclasses.asdict(m) for m in part],
            "links": {name: "kube" for name in KUBE_LINKS},
            "versions": {**versions.PINS, **PINS},
        }
        (pdir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        dirs.append(pdir)
        log(f"bundle part {i}: {len(part)} binaries, {sizes[i - 1] / 2**20:.1f} MiB -> {pdir}")
    took = fmt_duration(time.monotonic() - started)
    log(f"bundle of {len(packed)} binaries in {len(dirs)} part(s) in {took}")
    return dirs


def unpack(part_dirs: list[Path], bindir: Path) -> Path:
    """On the GPU host: decompress every part's members into `bindir`, check digests, make the symlinks."""
    bindir.mkdir(parents=True, exist_ok=True)
    count = 0
    for pdir in part_dirs:
        manifest = json.loads((pdir / MANIFEST).read_text())
        for raw in manifest["members"]:
            member = Member(**raw)
            target = bindir / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if (
                target.is_file()
                and target.stat().st_size == member.size
                and images.sha256_file(target) == member.sha256
            ):
                continue
            with lzma.open(pdir / member.xz) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            if images.sha256_file(target) != member.sha256:
                raise TestbedError(
                    f"{target}: digest differs from the bundle's: a part was damaged in transit"
                )
            target.chmod(0o755)
            count += 1
        for name, dest in manifest["links"].items():
            link = bindir / name
            if not link.is_symlink():
                link.unlink(missing_ok=True)
                link.symlink_to(dest)
    log(f"unpacked {count} binaries into {bindir}")
    return bindir


# --- `python -m testbed up --gpu-host`: the single-node GPU cluster ---------------------------------------


@dataclass(frozen=True)
class GpuHost:
    """What `up --gpu-host` was asked for; saved in the state so `up` can tell what changed."""

    bin_dir: str  # the unpacked bundle (or the testbed's own bin dir + the NVIDIA one on a host with Go)
    python: str  # the interpreter whose environment has torch and transformers (goes into the probe image)
    time_slicing: int = 1  # nvidia.com/gpu replicas per physical GPU (1: no sharing)
    node_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        """For state.json."""
        return dataclasses.asdict(self)


REQUIRED_BINARIES = (
    *HOST_BINARIES,
    *KUBE_LINKS,
    *NVIDIA_BINARIES,
    "cni/bridge",
    "cni/host-local",
    "cni/loopback",
)


def check_bin_dir(bindir: Path) -> None:
    """Every binary the GPU host runs is there (no Go on a GPU host: nothing can be built there)."""
    missing = [b for b in REQUIRED_BINARIES if not (bindir / b).exists()]
    if missing:
        raise TestbedError(
            f"{bindir} lacks {', '.join(missing)}: unpack the bundle there "
            "(`python -m testbed unpack-bundle PART_DIR... --bin-dir DIR`; "
            "parts from `python -m testbed bundle`)"
        )


def node_name() -> str:
    """The host's name as a DNS-1123 node name (a kubelet registers under its hostname by default)."""
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")
    return name[:63].strip("-") or "gpu-host"


ENVIRONMENT_SCRIPT = """
import json, site, sys
try:
    import torch, transformers
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
except ImportError as exc:
    versions = {"missing": str(exc)}
paths = [sys.prefix] if sys.prefix != sys.base_prefix else []  # a venv: all (pyvenv.cfg, bin, lib)
if "torch" in versions:  # a system interpreter: its site/dist-packages only when they hold torch
    found = site.getsitepackages() + [site.getusersitepackages()]
    paths += [p for p in found if not p.startswith(sys.prefix)]
print(json.dumps({"paths": paths, **versions}))
"""


def python_environment(python: str) -> tuple[tuple[str, ...], str | None]:
    """(host paths holding the interpreter's packages, torch version or None when torch is missing).

    A venv goes in whole; a system interpreter with torch brings its site/dist-packages directories; one
    without torch gives an image of the interpreter alone (driver and nvidia-smi layers only).
    """
    try:
        proc = subprocess.run(
            [python, "-c", ENVIRONMENT_SCRIPT], capture_output=True, text=True, timeout=180, check=False
        )
    except OSError as exc:
        raise TestbedError(f"cannot run {python} (--python): {exc}") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise TestbedError(f"cannot run {python} (the probe image is made from its environment): {last}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    if "torch" not in found:
        log(
            f"{python}: {found['missing']}: its probe image runs the driver and nvidia_smi layers only "
            "(torch_cuda, gpt2 and gpu_perf will say torch is missing)"
        )
    paths = tuple(p for p in found["paths"] if os.path.isdir(p))
    return paths, found.get("torch")


def probe_image_paths(python: str) -> tuple[str, ...]:
    """What the GPU host's probe image holds: the interpreter's environment, plus the system libraries the
    driver's nvidia-smi needs (CDI mounts nvidia-smi, not the glibc parts it links: in the small image of
    the H100 cluster run it failed with "libpthread.so.0: cannot open shared object file")."""
    paths, _ = python_environment(python)
    smi = shutil.which("nvidia-smi")
    needed = images.shared_libraries([os.path.realpath(smi)]) if smi else set()
    return (*paths, *sorted(p for p in needed if not images.is_driver_library(p)))


def add_probe_image(python: str) -> str:
    """Build the probe image of another interpreter into the running GPU host node; returns its name.

    The cluster can come up first with a small image (`--python /usr/bin/python3`: seconds) and the
    torch image (gigabytes) follows, so the lower layers are proven while the big import runs.
    """
    from testbed.state import State

    state = State.load()
    if state is None or not state.real_node:
        raise TestbedError("no running node: start one with `python -m testbed up --gpu-host` first")
    spec = dataclasses.replace(images.probe_image_spec(probe_image_paths(python), python), stream=True)
    started = time.monotonic()
    image = images.build_image(spec, versions.cache_root() / "images")
    log(f"probe image {image.name}: {len(image.entries or {})} files, {image.size / 2**30:.2f} GiB")
    node = state.real_node
    images.import_images(Path(node["bin_dir"]) / "ctr", node["containerd_address"], [image])
    node.setdefault("images", {})[f"probe:{python}"] = image.name
    state.save()
    log(f"imported {image.name} in {fmt_duration(time.monotonic() - started)}")
    return image.name


def plugin_image_spec(bindir: Path, nvml_dependencies: tuple[str, ...] = ()) -> images.ImageSpec:
    """NVIDIA's device plugin image: the built binary, the glibc it links, and what the host's NVML links.

    The plugin links only libc; it dlopens libnvidia-ml.so.1 from the driver root, and that library needs
    libm, libdl, libpthread and librt, which must be in the image or the dlopen fails and the plugin says
    "only supported on NVML-based systems" (the second H100 run). NVML itself stays the host's.
    """
    return images.ImageSpec(
        repository=PLUGIN_REPOSITORY,
        tag_prefix=DEVICE_PLUGIN_VERSION,
        paths=(str(bindir / "nvidia-device-plugin"), *nvml_dependencies),
        env=("PATH=/usr/bin:/bin",),
        cmd=(str(bindir / "nvidia-device-plugin"),),
    )


def node_options(host: GpuHost, libs: DriverLibraries) -> NodeOptions:
    """The real node of a GPU host: no fake plugin, no taint (the only node), torch in the probe image."""
    paths = probe_image_paths(host.python)
    nvml_dependencies = tuple(sorted(images.shared_libraries([libs.nvml])))
    return NodeOptions(
        name=host.node_name,
        fake_gpus=0,
        probe_paths=paths,
        probe_python=host.python,
        stream_probe_image=True,
        taints=(),
        labels=(),
        extra_images=(("nvidia-device-plugin", plugin_image_spec(Path(host.bin_dir), nvml_dependencies)),),
        ready_timeout_s=180.0,
    )


def configure_gpus(
    api_client: client.ApiClient, host: GpuHost, image: str, work: Path, timeout: float = 180.0
) -> int:
    """Apply the device plugin with the wanted sharing, wait until the node advertises the GPUs, label it.

    Returns the number of nvidia.com/gpu the node advertises (physical GPUs x time-slicing replicas).
    """
    bindir = Path(host.bin_dir)
    physical = physical_gpus()
    config = apply_device_plugin(api_client, bindir, host.time_slicing, image)
    expected = physical * max(1, host.time_slicing)
    wait_gpus_advertised(api_client, host.node_name, expected, timeout)
    labels = apply_gfd_labels(api_client, host.node_name, bindir, config, work)
    product = labels.get("nvidia.com/gpu.product")
    sharing = labels.get("nvidia.com/gpu.sharing-strategy")
    log(
        f"node {host.node_name}: nvidia.com/gpu={expected} ({physical} physical x "
        f"{max(1, host.time_slicing)}), GFD labels: product {product}, sharing {sharing}"
    )
    return expected


def physical_gpus() -> int:
    """GPUs the driver shows (nvidia-smi -L): what the plugin must advertise, times the replicas."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise TestbedError("no nvidia-smi on PATH: a GPU host needs the NVIDIA driver installed")
    proc = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60, check=False)
    gpus = [line for line in proc.stdout.splitlines() if line.startswith("GPU ")]
    if proc.returncode != 0 or not gpus:
        raise TestbedError(f"nvidia-smi -L found no GPU ({proc.returncode}): {proc.stderr.strip()}")
    return len(gpus)


CDI_DIR = Path("/var/run/cdi")


def cdi_specs() -> list[str]:
    """The CDI spec files present now (the device plugin writes its own there; `down` removes only that)."""
    return sorted(p.name for p in CDI_DIR.iterdir()) if CDI_DIR.is_dir() else []


def remove_cdi_specs(before: list[str]) -> list[str]:
    """Remove the CDI specs that appeared while the cluster ran; returns problems."""
    problems = []
    for name in set(cdi_specs()) - set(before):
        try:
            (CDI_DIR / name).unlink()
            log(f"removed CDI spec {CDI_DIR / name}")
        except OSError as exc:
            problems.append(f"cannot remove {CDI_DIR / name}: {exc}")
    return problems


def same_host(saved: dict[str, Any], wanted: GpuHost) -> bool:
    """The running GPU host cluster was made from the same binaries, interpreter and node name."""
    return all(saved.get(k) == getattr(wanted, k) for k in ("bin_dir", "python", "node_name"))


def merged_bin_dir(bindir: Path, nvidia: Path) -> Path:
    """One directory with the testbed's and the NVIDIA binaries (links), for a GPU host that has Go."""
    merged = versions.cache_root() / "gpuhost-bin"
    merged.mkdir(parents=True, exist_ok=True)
    for source in [*bindir.iterdir(), *nvidia.iterdir()]:
        link = merged / source.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
    return merged
