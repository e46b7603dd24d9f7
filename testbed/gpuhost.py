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

import hashlib
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from testbed import build, cluster, versions
from testbed.build import Component, fmt_duration, log, run_go, write_module
from testbed.errors import TestbedError

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


def bundle(out: Path, node_bins: list[Path], images: list[Path]) -> Path:
    """One tar.xz with every binary and image the GPU host needs: the device tool carries 64 MiB a call.

    Binaries go under bin/ (symlinks kept, so the multicall Kubernetes binary travels once), images under
    images/. xz -9 with all cores: 56 MiB measured for the same set in REFERENCE.md.
    """
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix("")  # .tar
    with tarfile.open(raw, "w") as tar:
        for path in node_bins:
            tar.add(path, arcname=f"bin/{path.name}", recursive=False)
        for path in images:
            tar.add(path, arcname=f"images/{path.name}")
    if shutil.which("xz") is None:
        raise TestbedError("xz is not installed: apt-get install xz-utils")
    subprocess.run(["xz", "-9", "-T0", "-f", str(raw)], check=True)
    size = out.stat().st_size / 2**20
    log(f"bundle {out} ({size:.1f} MiB) in {fmt_duration(time.monotonic() - started)}")
    return out


def unpack(bundle_path: Path, dest: Path) -> Path:
    """Unpack a bundle on the GPU host; returns its bin directory."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(bundle_path, "r:xz") as tar:
        tar.extractall(dest, filter="tar")
    os.chmod(dest / "bin", 0o755)
    return dest / "bin"


# --- the real NVIDIA device plugin, as a DaemonSet on the real node ----------------------------------------

PLUGIN_IMAGE = f"k8s-gpu-acceptance.local/nvidia-device-plugin:{DEVICE_PLUGIN_VERSION}"
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


def device_plugin_daemonset(plugin_path: str, cdi_hook_path: str, config_digest: str) -> dict[str, Any]:
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
                            "image": PLUGIN_IMAGE,
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


def apply_device_plugin(api_client: client.ApiClient, bindir: Path, replicas: int) -> str:
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
        str(bindir / "nvidia-device-plugin"), str(bindir / "nvidia-cdi-hook"), config_digest(config)
    )
    name = ds["metadata"]["name"]
    cluster.create_or_replace(
        lambda: apps.create_namespaced_daemon_set("kube-system", ds),
        lambda: apps.replace_namespaced_daemon_set(name, "kube-system", ds),
    )
    return config


def wait_gpus_advertised(api_client: client.ApiClient, node: str, expected: int, timeout: float) -> None:
    """Watch the node until allocatable nvidia.com/gpu is `expected` (the plugin registered and listed)."""
    core = client.CoreV1Api(api_client)

    def advertised(nodes: Any) -> bool:
        return any((n.status.allocatable or {}).get("nvidia.com/gpu") == str(expected) for n in nodes.items)

    cluster.wait_for(
        core.list_node,
        advertised,
        f"node {node} to advertise nvidia.com/gpu={expected} (device plugin registered)",
        timeout,
        field_selector=f"metadata.name={node}",
    )


def apply_gfd_labels(
    api_client: client.ApiClient, node: str, bindir: Path, config: str, work: Path
) -> dict[str, str]:
    """Run GPU Feature Discovery once on this host and put its labels on the node (NFD's job elsewhere)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "gfd-config.yaml").write_text(config)
    output = work / "gfd-labels"
    proc = subprocess.run(
        [
            str(bindir / "gpu-feature-discovery"),
            "--oneshot",
            "--no-timestamp",
            f"--output-file={output}",
            f"--config-file={work / 'gfd-config.yaml'}",
        ],
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
