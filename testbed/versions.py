"""Pinned versions of everything the testbed builds, and where the builds are cached.

One place for the pins so that the cache key, the build and the README cannot disagree.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# kwok v0.8.0's default Kubernetes (sigs.k8s.io/kwok@v0.8.0/pkg/consts.KubeVersion).
KUBERNETES_VERSION = "v1.36.1"
# The published twins of k8s.io/kubernetes' staging modules carry the tag v0.<minor>.<patch>.
KUBERNETES_STAGING_VERSION = "v0.36.1"
# Release date of the tag (from the module proxy's .info), used as the binaries' buildDate.
KUBERNETES_BUILD_DATE = "2026-05-12T09:51:33Z"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
# MinIO release tags are not semver: pin the pseudo-version of a commit (go list -m ...@latest).
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"

# The real node (kubelet from the multicall binary + containerd + runc + bridge CNI).
CONTAINERD_VERSION = "v2.4.2"
RUNC_VERSION = "v1.5.2"
CNI_PLUGINS_VERSION = "v1.10.0"
CRICTL_VERSION = "v1.36.0"  # sigs.k8s.io/cri-tools: only for debugging the node by hand
# The sandbox image: build/pause/linux/pause.c of the k8s.io/kubernetes module (its Makefile TAG).
PAUSE_VERSION = "3.10.2"

# Shown by the device plugin DaemonSet; kwok runs no container, so the image is never pulled.
DEVICE_PLUGIN_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:v0.17.1"

PINS: dict[str, str] = {
    "kubernetes": KUBERNETES_VERSION,
    "etcd": ETCD_VERSION,
    "kwok": KWOK_VERSION,
    "minio": MINIO_VERSION,
    "containerd": CONTAINERD_VERSION,
    "runc": RUNC_VERSION,
    "cni-plugins": CNI_PLUGINS_VERSION,
    "crictl": CRICTL_VERSION,
    "pause": PAUSE_VERSION,
}


def cache_root() -> Path:
    """Root of everything the testbed keeps outside the repo (override: TESTBED_CACHE_DIR)."""
    override = os.environ.get("TESTBED_CACHE_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "k8s-gpu-acceptance"


def version_key() -> str:
    """Readable cache key: a new pin means a new directory, never a stale binary."""
    digest = hashlib.sha256(repr(sorted(PINS.items())).encode()).hexdigest()[:8]
    return f"k8s-{KUBERNETES_VERSION}-{digest}"


def bin_dir() -> Path:
    """Where the built binaries live."""
    return cache_root() / version_key() / "bin"


def src_dir() -> Path:
    """Where the throwaway Go modules used for building live."""
    return cache_root() / version_key() / "src"


# Argo Workflows (opt-in: `up --argo`): workflow-controller and argoexec, built by testbed/argo.py in a cache
# directory of their own, so this pin never invalidates the (long) Kubernetes build above.
# v3.7.6, not v4: the Go module proxy serves argo-workflows/v4 v4.0.5, but security flaws are reported for
# that release, and v4 is a new major whose CRDs and executor are new too; v3.7.6 is the newest v3.7 patch in
# reach here (2025-12-09), the line the users' Metaflow (2.19) compiles its WorkflowTemplates for. Its go.mod
# has one replace directive (github.com/olekukonko/tablewriter => v0.0.5), which `go install` refuses: the
# build copies it into a throwaway module (as for k8s.io/kubernetes).
ARGO_WORKFLOWS_VERSION = "v3.7.6"
# From the module proxy's .info of that tag: the release's commit and time (the binaries' version ldflags).
ARGO_WORKFLOWS_COMMIT = "9572e7b8243834b951385584c2a344378accb76d"
ARGO_WORKFLOWS_BUILD_DATE = "2025-12-09T13:25:23Z"
ARGO_PINS: dict[str, str] = {"argo-workflows": ARGO_WORKFLOWS_VERSION}


def argo_bin_dir() -> Path:
    """The Argo binaries' own cache directory (keyed by ARGO_PINS only)."""
    digest = hashlib.sha256(repr(sorted(ARGO_PINS.items())).encode()).hexdigest()[:8]
    return cache_root() / f"argo-{digest}" / "bin"
