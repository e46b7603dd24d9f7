"""Build the testbed's binaries from Go modules at pinned versions, once, into a cache outside the repo.

Everything comes through the Go module proxy at build time; nothing is downloaded when the testbed runs.
A component whose binaries exist and report the pinned version is not rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from testbed import versions
from testbed.errors import TestbedError

HEARTBEAT_S = 60.0


def log(message: str) -> None:
    """Progress goes to stderr so that `python -m testbed env` keeps a clean stdout."""
    print(f"[testbed] {message}", file=sys.stderr, flush=True)


def fmt_duration(seconds: float) -> str:
    """Human-readable durations for the progress lines (CI logs are read by people)."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


@dataclass(frozen=True)
class Component:
    """One build step: the binaries it produces and how each reports its version.

    `binaries` are paths relative to the bin dir (e.g. `cni/bridge`); `links` are symlinks made in the bin dir
    to the first binary (the multicall `kube`); `version_flag` is what makes every binary print its version.
    """

    name: str
    binaries: tuple[str, ...]
    expect: str  # substring every binary's version output must contain
    build: Callable[[Path, Path], None]  # (work dir, output dir)
    links: tuple[str, ...] = ()
    version_flag: str = "--version"


def go_env(cgo: bool = False) -> dict[str, str]:
    """Small, static binaries that carry no local paths (cgo only where a component needs a C library)."""
    env = dict(os.environ)
    env["CGO_ENABLED"] = "1" if cgo else "0"
    flags = env.get("GOFLAGS", "").split()
    for flag in ("-trimpath", "-buildvcs=false"):
        if flag not in flags:
            flags.append(flag)
    env["GOFLAGS"] = " ".join(flags)
    return env


def go_binary() -> str:
    """The go command, or one clear line saying why the testbed cannot be built."""
    go = shutil.which("go")
    if go is None:
        raise TestbedError(
            "Go is not installed (no `go` on PATH): the testbed builds its Kubernetes control plane, etcd, "
            "kwok and MinIO from Go modules and will not run a fake instead"
        )
    return go


def run_go(
    args: Sequence[str], cwd: Path, logfile: Path, what: str, env: dict[str, str] | None = None
) -> None:
    """Run one go command with its output in a log file and a heartbeat line every minute."""
    cmd = [go_binary(), *args]
    started = time.monotonic()
    with logfile.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env or go_env())
        while True:
            try:
                rc = proc.wait(timeout=HEARTBEAT_S)
                break
            except subprocess.TimeoutExpired:
                log(f"  ... {what}: still running after {fmt_duration(time.monotonic() - started)}")
    if rc != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-40:]
        raise TestbedError(
            f"`{' '.join(cmd)}` failed with exit code {rc} (full log: {logfile}):\n" + "\n".join(tail)
        )


def write_module(workdir: Path, name: str, body: str = "") -> None:
    """A throwaway main module: only there to give `go build` a place to pin versions and replaces."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "go.mod").write_text(
        f"module k8s-gpu-acceptance.local/testbed-build/{name}\n\ngo 1.26.0\n{body}"
    )
    (workdir / "go.sum").unlink(missing_ok=True)


def downloaded_module(workdir: Path, logfile: Path, module: str) -> dict[str, str]:
    """Download one module@version into the module cache; returns `go mod download -json` (Dir, GoMod)."""
    run_go(["mod", "download", module], workdir, logfile, f"download {module}")
    out = subprocess.run(
        [go_binary(), "mod", "download", "-json", module],
        cwd=workdir,
        env=go_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    info: dict[str, str] = json.loads(out)
    return info


def staging_modules(workdir: Path, logfile: Path) -> list[str]:
    """The k8s.io modules that k8s.io/kubernetes replaces with ./staging/... in its own go.mod."""
    module = f"k8s.io/kubernetes@{versions.KUBERNETES_VERSION}"
    gomod = Path(downloaded_module(workdir, logfile, module)["GoMod"]).read_text()
    names = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", gomod, flags=re.MULTILINE)
    if not names:
        raise TestbedError(
            f"found no staging replaces in the go.mod of {module}: the build recipe needs updating"
        )
    return names


def kube_ldflags() -> str:
    """Version ldflags as the Kubernetes release build sets them, so `--version` says v1.36.1."""
    major, minor = versions.KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={versions.KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={versions.KUBERNETES_BUILD_DATE}",
        ]
    return " ".join(flags)


# The multicall binary `kube` answers to these names (symlinks in the bin dir); see testbed/go/kube/main.go.
KUBE_COMMANDS = ("kube-apiserver", "kube-scheduler", "kube-controller-manager", "kubelet", "kubectl")
GO_SOURCES = Path(__file__).resolve().parent / "go"
# The packages testbed/go/*/main.go import from the Kubernetes modules, resolved at the pinned versions.
KUBE_IMPORTS = (
    "k8s.io/kubernetes/cmd/kube-apiserver/app",
    "k8s.io/kubernetes/cmd/kube-scheduler/app",
    "k8s.io/kubernetes/cmd/kube-controller-manager/app",
    "k8s.io/kubernetes/cmd/kubelet/app",
)
STAGING_IMPORTS = (
    "k8s.io/kubectl/pkg/cmd",
    "k8s.io/kubectl/pkg/cmd/util",
    "k8s.io/component-base/cli",
    "k8s.io/component-base/version",
    "k8s.io/client-go/plugin/pkg/client/auth",
    "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1",
)


def go_source_id() -> str:
    """Digest of the project's own Go sources: a changed main.go gives another version, hence a rebuild."""
    digest = hashlib.sha256()
    for path in sorted(GO_SOURCES.rglob("*.go")):
        digest.update(str(path.relative_to(GO_SOURCES)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def build_kube(workdir: Path, out: Path) -> None:
    """k8s.io/kubernetes refuses `go install` (staging replaces): pin its published twins instead.

    One `go build` makes the multicall `kube` (every Kubernetes command) and the fake GPU device plugin, both
    mains of this throwaway module (sources copied from testbed/go), so shared packages compile once.
    """
    logfile = workdir / "build.log"
    workdir.mkdir(parents=True, exist_ok=True)
    names = staging_modules(workdir, logfile)
    replaces = "".join(f"\t{n} => {n} {versions.KUBERNETES_STAGING_VERSION}\n" for n in names)
    write_module(
        workdir,
        "kube",
        f"\nrequire k8s.io/kubernetes {versions.KUBERNETES_VERSION}\n\nreplace (\n{replaces})\n",
    )
    shutil.rmtree(workdir / "cmd", ignore_errors=True)
    mains = sorted(p.parent.name for p in GO_SOURCES.glob("*/main.go"))
    for name in mains:
        (workdir / "cmd" / name).mkdir(parents=True)
        shutil.copy2(GO_SOURCES / name / "main.go", workdir / "cmd" / name / "main.go")
    pins = [f"{p}@{versions.KUBERNETES_VERSION}" for p in KUBE_IMPORTS]
    pins += [f"{p}@{versions.KUBERNETES_STAGING_VERSION}" for p in STAGING_IMPORTS]
    run_go(["get", *pins], workdir, logfile, "resolve modules")
    ids = f"-X main.sourceID={go_source_id()} -X main.kubeVersion={versions.KUBERNETES_VERSION}"
    ldflags = f"{kube_ldflags()} {ids}"
    # -mod=mod: the modules only our mains import directly (cobra, grpc) come from k8s.io/kubernetes' pins.
    run_go(
        ["build", "-mod=mod", "-ldflags", ldflags, "-o", f"{out}/", *(f"./cmd/{m}" for m in mains)],
        workdir,
        logfile,
        "go build kube + fake-gpu-device-plugin",
    )


def build_etcd(workdir: Path, out: Path) -> None:
    """go.etcd.io/etcd/server/v3 has local replaces too; its v3 twins are published at the same tag."""
    logfile = workdir / "build.log"
    write_module(workdir, "etcd")
    run_go(["get", f"go.etcd.io/etcd/server/v3@{versions.ETCD_VERSION}"], workdir, logfile, "resolve modules")
    run_go(
        ["build", "-ldflags", "-s -w", "-o", str(out / "etcd"), "go.etcd.io/etcd/server/v3"],
        workdir,
        logfile,
        "go build etcd",
    )


def go_install(workdir: Path, out: Path, ldflags: str, pkgs: Sequence[str], what: str) -> None:
    """Modules without replaces install directly at a pinned version."""
    workdir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    env = go_env()
    env["GOBIN"] = str(out)
    run_go(["install", "-ldflags", ldflags, *pkgs], workdir, workdir / "build.log", what, env=env)


def build_kwok(workdir: Path, out: Path) -> None:
    """kwok (the controller that plays kubelet) and kwokctl (starts the cluster from local binaries)."""
    pkgs = [f"sigs.k8s.io/kwok/cmd/{c}@{versions.KWOK_VERSION}" for c in ("kwok", "kwokctl")]
    go_install(workdir, out, "-s -w", pkgs, "go install kwok kwokctl")


def minio_ldflags() -> str:
    """What MinIO's buildscripts/gen-ldflags.go sets, derived from the pinned pseudo-version."""
    stamp, commit = versions.MINIO_VERSION.split("-")[1:3]
    t = time.strptime(stamp, "%Y%m%d%H%M%S")
    pkg = "github.com/minio/minio/cmd"
    return " ".join(
        [
            "-s -w",
            f"-X {pkg}.Version={time.strftime('%Y-%m-%dT%H:%M:%SZ', t)}",
            f"-X {pkg}.ReleaseTag=DEVELOPMENT.{time.strftime('%Y-%m-%dT%H-%M-%SZ', t)}",
            f"-X {pkg}.CommitID={commit}",
            f"-X {pkg}.ShortCommitID={commit}",
            f"-X {pkg}.CopyrightYear={t.tm_year}",
        ]
    )


def build_minio(workdir: Path, out: Path) -> None:
    """The real MinIO server, pinned to a commit (its tags are not semver)."""
    go_install(
        workdir,
        out,
        minio_ldflags(),
        [f"github.com/minio/minio@{versions.MINIO_VERSION}"],
        "go install minio",
    )


def ensure_debian_packages(needed: dict[str, str]) -> None:
    """Install the Debian packages whose files are missing ({file: package}); CI runs on a fresh machine."""
    missing = sorted({pkg for path, pkg in needed.items() if not Path(path).exists()})
    if not missing:
        return
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise TestbedError(
            f"the build needs the Debian packages {' '.join(missing)} (for {', '.join(needed)}): "
            f"install them (apt-get install {' '.join(missing)}) and run the build again"
        )
    log(f"  installing {' '.join(missing)} with apt-get ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run([apt, "update"], env=env, capture_output=True, check=False)
        proc = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise TestbedError(f"apt-get install {' '.join(missing)} failed:\n{proc.stdout}\n{proc.stderr}")


def build_containerd(workdir: Path, out: Path) -> None:
    """containerd, its runc shim and ctr: static (cgo off: no btrfs snapshotter), versioned as `make` does."""
    pkg = "github.com/containerd/containerd/v2"
    ldflags = f"-s -w -X {pkg}/version.Version={versions.CONTAINERD_VERSION} -X {pkg}/version.Package={pkg}"
    env = go_env()
    env["GOBIN"] = str(out)
    workdir.mkdir(parents=True, exist_ok=True)
    logfile = workdir / "build.log"
    at = versions.CONTAINERD_VERSION
    run_go(
        [
            "install",
            "-tags",
            "urfave_cli_no_docs",
            "-ldflags",
            ldflags,
            f"{pkg}/cmd/containerd@{at}",
            f"{pkg}/cmd/ctr@{at}",
        ],
        workdir,
        logfile,
        "go install containerd ctr",
        env=env,
    )
    run_go(
        [
            "install",
            "-tags",
            "urfave_cli_no_docs no_grpc",
            "-ldflags",
            ldflags,
            f"{pkg}/cmd/containerd-shim-runc-v2@{at}",
        ],
        workdir,
        logfile,
        "go install containerd-shim-runc-v2",
        env=env,
    )


def build_runc(workdir: Path, out: Path) -> None:
    """runc with seccomp (cgo, links libseccomp.so.2): the pod's RuntimeDefault profile needs it."""
    ensure_debian_packages({"/usr/include/seccomp.h": "libseccomp-dev", "/usr/bin/gcc": "gcc"})
    workdir.mkdir(parents=True, exist_ok=True)
    env = go_env(cgo=True)
    env["GOBIN"] = str(out)
    run_go(
        [
            "install",
            "-tags",
            "seccomp urfave_cli_no_docs",
            "-ldflags",
            "-s -w",
            f"github.com/opencontainers/runc@{versions.RUNC_VERSION}",
        ],
        workdir,
        workdir / "build.log",
        "go install runc",
        env=env,
    )


CNI_PLUGINS = ("loopback", "bridge", "host-local", "portmap", "ptp")
CNI_PATHS = {
    "loopback": "plugins/main/loopback",
    "bridge": "plugins/main/bridge",
    "ptp": "plugins/main/ptp",
    "host-local": "plugins/ipam/host-local",
    "portmap": "plugins/meta/portmap",
}


def build_cni(workdir: Path, out: Path) -> None:
    """The CNI plugins the node's bridge network uses, in out/cni (containerd's CNI bin dir)."""
    mod = "github.com/containernetworking/plugins"
    ldflags = f"-s -w -X {mod}/pkg/utils/buildversion.BuildVersion={versions.CNI_PLUGINS_VERSION}"
    pkgs = [f"{mod}/{CNI_PATHS[p]}@{versions.CNI_PLUGINS_VERSION}" for p in CNI_PLUGINS]
    go_install(workdir, out / "cni", ldflags, pkgs, "go install CNI plugins")


def build_crictl(workdir: Path, out: Path) -> None:
    """crictl, to look at the node's containers by hand (and to remove pods cleanly at `down`)."""
    ldflags = f"-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version={versions.CRICTL_VERSION}"
    go_install(
        workdir,
        out,
        ldflags,
        [f"sigs.k8s.io/cri-tools/cmd/crictl@{versions.CRICTL_VERSION}"],
        "go install crictl",
    )


def pause_version() -> str:
    """What our pause binary prints for `-v` (upstream's format: v<TAG>-<REV>)."""
    return f"v{versions.PAUSE_VERSION}-k8s-gpu-acceptance"


def build_pause(workdir: Path, out: Path) -> None:
    """The sandbox image's only program, from pause.c in the pinned k8s.io/kubernetes module (gcc -static)."""
    # openssl too: `up` signs the real node's kubelet certificate with it.
    ensure_debian_packages(
        {
            "/usr/bin/gcc": "gcc",
            "/usr/lib/x86_64-linux-gnu/libc.a": "libc6-dev",
            "/usr/bin/openssl": "openssl",
        }
    )
    workdir.mkdir(parents=True, exist_ok=True)
    logfile = workdir / "build.log"
    write_module(workdir, "pause")
    moddir = downloaded_module(workdir, logfile, f"k8s.io/kubernetes@{versions.KUBERNETES_VERSION}")["Dir"]
    source = Path(moddir) / "build" / "pause" / "linux" / "pause.c"
    flags = ["-Os", "-Wall", "-Werror", "-static", f"-DVERSION={pause_version()}"]
    cmd = ["gcc", *flags, "-o", str(out / "pause"), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise TestbedError(f"`{' '.join(cmd)}` failed:\n{proc.stdout}{proc.stderr}")


def minio_expect() -> str:
    """The commit MinIO reports after `minio --version`."""
    return versions.MINIO_VERSION.split("-")[2]


COMPONENTS: tuple[Component, ...] = (
    Component(
        "kube",
        ("kube", "fake-gpu-device-plugin"),
        f"Kubernetes {versions.KUBERNETES_VERSION}, source {go_source_id()}",
        build_kube,
        links=KUBE_COMMANDS,
    ),
    Component("etcd", ("etcd",), f"etcd Version: {versions.ETCD_VERSION.lstrip('v')}", build_etcd),
    Component("kwok", ("kwok", "kwokctl"), versions.KWOK_VERSION.lstrip("v"), build_kwok),
    Component("minio", ("minio",), minio_expect(), build_minio),
    Component(
        "containerd",
        ("containerd", "containerd-shim-runc-v2", "ctr"),
        versions.CONTAINERD_VERSION,
        build_containerd,
    ),
    Component("runc", ("runc",), f"runc version {versions.RUNC_VERSION.lstrip('v')}", build_runc),
    Component("cni", tuple(f"cni/{p}" for p in CNI_PLUGINS), versions.CNI_PLUGINS_VERSION, build_cni),
    Component("crictl", ("crictl",), versions.CRICTL_VERSION, build_crictl),
    Component("pause", ("pause",), pause_version(), build_pause, version_flag="-v"),
)


def binary_version(path: Path, flag: str = "--version") -> str:
    """First line of `<binary> --version`, or why there is none."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}  # a CNI plugin prints its version
    try:
        proc = subprocess.run([str(path), flag], capture_output=True, text=True, timeout=30, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"<cannot run: {exc}>"
    text = (proc.stdout or proc.stderr).strip()
    return " ".join(text.splitlines()[:2]) if text else f"<no output, exit {proc.returncode}>"


def installed_versions(bindir: Path, components: Sequence[Component] = ()) -> dict[str, str]:
    """Every cached binary's version line (run in parallel: this is on the warm `up` path)."""
    flags = {
        b: c.version_flag for c in components or COMPONENTS for b in c.binaries if (bindir / b).is_file()
    }
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(flags)))) as pool:
        found = pool.map(lambda n: binary_version(bindir / n, flags[n]), flags)
        return dict(zip(flags, found, strict=True))


def links_ok(component: Component, bindir: Path) -> bool:
    """Every symlink of a multicall binary exists and points at it."""
    target = component.binaries[0] if component.binaries else ""
    return all(
        (bindir / link).is_symlink() and os.readlink(bindir / link) == target for link in component.links
    )


def is_built(component: Component, found: dict[str, str], bindir: Path | None = None) -> bool:
    """Built means: every binary exists and reports the pinned version (and its links are in place)."""
    versions_ok = all(component.expect in found.get(b, "") for b in component.binaries)
    return versions_ok and (bindir is None or links_ok(component, bindir))


def record_time(bindir: Path, name: str, seconds: float) -> None:
    """Keep the measured cold build times beside the binaries (the README quotes them)."""
    path = bindir.parent / "build-times.json"
    data: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
    data[name] = round(seconds, 1)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def ensure_built(
    bindir: Path | None = None, components: Sequence[Component] = COMPONENTS, srcdir: Path | None = None
) -> Path:
    """Build what is missing, say what is cached, and return the bin directory.

    `components` defaults to the testbed's; a GPU host adds its own (testbed/gpuhost.py) with these helpers,
    and Argo (testbed/argo.py) its own, with `bindir`/`srcdir` in a cache directory of its own.
    """
    bindir = bindir or versions.bin_dir()
    bindir.mkdir(parents=True, exist_ok=True)
    found = installed_versions(bindir, components)
    todo = [c for c in components if not is_built(c, found, bindir)]
    for c in components:
        if c not in todo:
            log(f"cached {c.name}: " + "; ".join(f"{b}: {found[b]}" for b in c.binaries))
    if not todo:
        return bindir
    go_binary()
    total = time.monotonic()
    for c in todo:
        log(f"build {c.name} ({', '.join(c.binaries)}) ...")
        started = time.monotonic()
        partial = bindir.parent / f"partial-{c.name}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        c.build((srcdir or versions.src_dir()) / c.name, partial)
        # Move in only when the whole step succeeded: a half-built component never looks cached.
        for b in c.binaries:
            (bindir / b).parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial / b, bindir / b)
        for link in c.links:
            (bindir / link).unlink(missing_ok=True)
            (bindir / link).symlink_to(c.binaries[0])
        shutil.rmtree(partial, ignore_errors=True)
        elapsed = time.monotonic() - started
        record_time(bindir, c.name, elapsed)
        got = {b: binary_version(bindir / b, c.version_flag) for b in c.binaries}
        if not is_built(c, got, bindir):
            raise TestbedError(f"{c.name} was built but reports {got}, expected {c.expect!r}")
        log(f"built {c.name} in {fmt_duration(elapsed)}: " + "; ".join(f"{b}: {v}" for b, v in got.items()))
    log(f"all builds done in {fmt_duration(time.monotonic() - total)}; binaries in {bindir}")
    return bindir
