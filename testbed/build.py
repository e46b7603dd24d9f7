"""Build the testbed's binaries from Go modules at pinned versions, once, into a cache outside the repo.

Everything comes through the Go module proxy at build time; nothing is downloaded when the testbed runs.
A component whose binaries exist and report the pinned version is not rebuilt.
"""

from __future__ import annotations

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
    """One build step: the binaries it produces and how each reports its version."""

    name: str
    binaries: tuple[str, ...]
    expect: str  # substring every binary's `--version` output must contain
    build: Callable[[Path, Path], None]  # (work dir, output dir)


def go_env() -> dict[str, str]:
    """Small, static binaries that carry no local paths."""
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
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


def staging_modules(workdir: Path, logfile: Path) -> list[str]:
    """The k8s.io modules that k8s.io/kubernetes replaces with ./staging/... in its own go.mod."""
    module = f"k8s.io/kubernetes@{versions.KUBERNETES_VERSION}"
    run_go(["mod", "download", module], workdir, logfile, f"download {module}")
    out = subprocess.run(
        [go_binary(), "mod", "download", "-json", module],
        cwd=workdir,
        env=go_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    gomod = Path(json.loads(out)["GoMod"]).read_text()
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


KUBE_COMMANDS = ("kube-apiserver", "kube-scheduler", "kube-controller-manager")


def build_kube(workdir: Path, out: Path) -> None:
    """k8s.io/kubernetes refuses `go install` (staging replaces): pin its published twins instead."""
    logfile = workdir / "build.log"
    workdir.mkdir(parents=True, exist_ok=True)
    names = staging_modules(workdir, logfile)
    replaces = "".join(f"\t{n} => {n} {versions.KUBERNETES_STAGING_VERSION}\n" for n in names)
    write_module(
        workdir,
        "kube",
        f"\nrequire k8s.io/kubernetes {versions.KUBERNETES_VERSION}\n\nreplace (\n{replaces})\n",
    )
    pkgs = [f"k8s.io/kubernetes/cmd/{c}" for c in KUBE_COMMANDS]
    run_go(
        ["get", *(f"{p}@{versions.KUBERNETES_VERSION}" for p in pkgs)], workdir, logfile, "resolve modules"
    )
    # One invocation for the three commands, so their shared packages compile once.
    run_go(["build", "-ldflags", kube_ldflags(), "-o", f"{out}/", *pkgs], workdir, logfile, "go build kube")


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


def minio_expect() -> str:
    """The commit MinIO reports after `minio --version`."""
    return versions.MINIO_VERSION.split("-")[2]


COMPONENTS: tuple[Component, ...] = (
    Component("kube", KUBE_COMMANDS, f"Kubernetes {versions.KUBERNETES_VERSION}", build_kube),
    Component("etcd", ("etcd",), f"etcd Version: {versions.ETCD_VERSION.lstrip('v')}", build_etcd),
    Component("kwok", ("kwok", "kwokctl"), versions.KWOK_VERSION.lstrip("v"), build_kwok),
    Component("minio", ("minio",), minio_expect(), build_minio),
)


def binary_version(path: Path) -> str:
    """First line of `<binary> --version`, or why there is none."""
    try:
        proc = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"<cannot run: {exc}>"
    text = (proc.stdout or proc.stderr).strip()
    return " ".join(text.splitlines()[:2]) if text else f"<no output, exit {proc.returncode}>"


def installed_versions(bindir: Path) -> dict[str, str]:
    """Every cached binary's version line (run in parallel: this is on the warm `up` path)."""
    names = [b for c in COMPONENTS for b in c.binaries if (bindir / b).is_file()]
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        return dict(zip(names, pool.map(lambda n: binary_version(bindir / n), names), strict=True))


def is_built(component: Component, found: dict[str, str]) -> bool:
    """Built means: every binary exists and reports the pinned version."""
    return all(component.expect in found.get(b, "") for b in component.binaries)


def record_time(bindir: Path, name: str, seconds: float) -> None:
    """Keep the measured cold build times beside the binaries (the README quotes them)."""
    path = bindir.parent / "build-times.json"
    data: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
    data[name] = round(seconds, 1)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def ensure_built(bindir: Path | None = None) -> Path:
    """Build what is missing, say what is cached, and return the bin directory."""
    bindir = bindir or versions.bin_dir()
    bindir.mkdir(parents=True, exist_ok=True)
    found = installed_versions(bindir)
    todo = [c for c in COMPONENTS if not is_built(c, found)]
    for c in COMPONENTS:
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
        c.build(versions.src_dir() / c.name, partial)
        # Move in only when the whole step succeeded: a half-built component never looks cached.
        for b in c.binaries:
            os.replace(partial / b, bindir / b)
        shutil.rmtree(partial, ignore_errors=True)
        elapsed = time.monotonic() - started
        record_time(bindir, c.name, elapsed)
        got = {b: binary_version(bindir / b) for b in c.binaries}
        if not is_built(c, got):
            raise TestbedError(f"{c.name} was built but reports {got}, expected {c.expect!r}")
        log(f"built {c.name} in {fmt_duration(elapsed)}: " + "; ".join(f"{b}: {v}" for b, v in got.items()))
    log(f"all builds done in {fmt_duration(time.monotonic() - total)}; binaries in {bindir}")
    return bindir
