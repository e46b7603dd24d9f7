"""Argo Workflows on the testbed (opt-in: `python -m testbed up --argo`).

- build: workflow-controller and argoexec v3.7.6 from the Go module, in one `go build` of a throwaway module
  that copies the release's replace directives (`go install` refuses a module that has any);
- run: Argo's CRDs read from that module's source (manifests/base/crds/minimal, nothing downloaded at run
  time), the executor's RBAC, the controller's ConfigMap, and the workflow-controller as a host process
  (admin kubeconfig, like the testbed's own recording controller) with `--executor-image` pointing at an
  argoexec image written from the built binary and imported into the real node's containerd;
- `down` (testbed/lifecycle.py) stops the controller; the objects go with the cluster.

TESTBED ONLY, said where it is set: the controller's `workflowDefaults` give every workflow `hostNetwork:
true` and the executor the apiserver's host address (KUBERNETES_SERVICE_HOST=127.0.0.1), because the testbed
runs no kube-proxy (the `kubernetes` Service's ClusterIP is not routed) and its MinIO listens on 127.0.0.1:
the same two things manifests/overlays/testbed does for the nightly CronJob.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from testbed import build, images, versions
from testbed.build import Component, fmt_duration, log, run_go, write_module
from testbed.errors import TestbedError
from testbed.state import Proc
from testbed.state import start as start_process
from testbed.state import stop as stop_process

ARGO_MODULE = "github.com/argoproj/argo-workflows/v3"
ARGO_COMMANDS = ("workflow-controller", "argoexec")


def module_replaces(gomod: str) -> list[str]:
    """The replace directives of a go.mod that point at another module (a local path cannot be copied).

    Returned as `old [version] => new version` lines, for a `replace ( ... )` block of the throwaway module.
    """
    lines: list[str] = []
    for block in re.findall(r"^replace\s*\((.*?)^\)", gomod, flags=re.MULTILINE | re.DOTALL):
        lines += block.splitlines()
    lines += re.findall(r"^replace\s+([^(\s].*)$", gomod, flags=re.MULTILINE)
    replaces = []
    for line in lines:
        line = line.split("//", 1)[0].strip()
        if "=>" not in line:
            continue
        target = line.split("=>", 1)[1].split()
        if target and not target[0].startswith((".", "/")):
            replaces.append(" ".join(line.split()))
    return replaces


def argo_ldflags() -> str:
    """What Argo's Makefile sets, so `argoexec version` says v3.7.6 (a tagged, clean release)."""
    pkg = ARGO_MODULE
    return " ".join(
        [
            "-s -w",
            f"-X {pkg}.version={versions.ARGO_WORKFLOWS_VERSION}",
            f"-X {pkg}.buildDate={versions.ARGO_WORKFLOWS_BUILD_DATE}",
            f"-X {pkg}.gitCommit={versions.ARGO_WORKFLOWS_COMMIT}",
            f"-X {pkg}.gitTag={versions.ARGO_WORKFLOWS_VERSION}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    )


# Files the repository keeps as symlinks, which Go module zips leave out (so `go build` of argoexec fails on
# Linux: "undefined: Setpgid"): path in the module -> the file the repository's symlink points at.
SYMLINKED_FILES = {
    "workflow/executor/osspecific/signal_linux.go": "workflow/executor/osspecific/signal_darwin.go",
}
# Parts of the module source no Go package of the two commands needs (copied source stays small).
SOURCE_SKIP = ("ui", "docs", "sdks", "test", "examples", "hack", "dev", "community", ".github")


def copy_source(moddir: Path, target: Path) -> None:
    """The module's source as a writable tree (module cache files are read-only), plus its symlinked files."""
    shutil.rmtree(target, ignore_errors=True)
    for root, dirs, files in os.walk(moddir):
        rel = Path(root).relative_to(moddir)
        if rel == Path("."):
            dirs[:] = [d for d in dirs if d not in SOURCE_SKIP]
        (target / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            if not name.endswith("_test.go"):
                shutil.copyfile(Path(root) / name, target / rel / name)
    for missing, source in SYMLINKED_FILES.items():
        if (target / missing).exists():
            raise TestbedError(f"{missing} is in the module now: drop it from SYMLINKED_FILES")
        shutil.copyfile(target / source, target / missing)


def build_argo(workdir: Path, out: Path) -> None:
    """Both commands in one `go build`: they share most packages (client-go, the workflow types).

    The module is built from its proxy zip with one fix: the file the repository has as a symlink
    (SYMLINKED_FILES) is restored in a local copy the throwaway module replaces the module with.
    """
    logfile = workdir / "build.log"
    workdir.mkdir(parents=True, exist_ok=True)
    write_module(workdir, "argo")
    module = f"{ARGO_MODULE}@{versions.ARGO_WORKFLOWS_VERSION}"
    info = build.downloaded_module(workdir, logfile, module)
    copy_source(Path(info["Dir"]), workdir / "argo-workflows")
    replaces = [f"{ARGO_MODULE} => ./argo-workflows", *module_replaces(Path(info["GoMod"]).read_text())]
    body = "".join(f"\t{r}\n" for r in replaces)
    write_module(
        workdir,
        "argo",
        f"\nrequire {ARGO_MODULE} {versions.ARGO_WORKFLOWS_VERSION}\n\nreplace (\n{body})\n",
    )
    pkgs = [f"{ARGO_MODULE}/cmd/{c}" for c in ARGO_COMMANDS]
    run_go(
        ["get", *(f"{p}@{versions.ARGO_WORKFLOWS_VERSION}" for p in pkgs)],
        workdir,
        logfile,
        "resolve modules",
    )
    run_go(
        ["build", "-mod=mod", "-ldflags", argo_ldflags(), "-o", f"{out}/", *pkgs],
        workdir,
        logfile,
        "go build workflow-controller + argoexec",
    )


COMPONENT = Component(
    "argo",
    ARGO_COMMANDS,
    f": {versions.ARGO_WORKFLOWS_VERSION}",
    build_argo,
    version_flag="version",
)


def ensure_argo_built() -> Path:
    """Build workflow-controller and argoexec unless cached at the pinned version, and keep the release's
    CRDs beside them (read at `up`: nothing is downloaded at run time); returns the bin dir."""
    bindir = versions.argo_bin_dir()
    build.ensure_built(bindir, (COMPONENT,), srcdir=bindir.parent / "src")
    if not any(crds_dir().glob("*.yaml")):
        workdir = bindir.parent / "src" / "argo"
        module = f"{ARGO_MODULE}@{versions.ARGO_WORKFLOWS_VERSION}"
        moddir = Path(build.downloaded_module(workdir, workdir / "build.log", module)["Dir"])
        log(f"argo: {len(copy_crds(moddir, crds_dir()))} CRDs copied from {moddir}")
    return bindir


# --- running it on the testbed -----------------------------------------------------------------------------

CONTROLLER_NAMESPACE = "argo"
PROC_NAME = "argo-workflow-controller"  # its key in the testbed state's procs (`up --argo`)
CONFIGMAP = "workflow-controller-configmap"
EXECUTOR_ROLE = "k8s-gpu-acceptance-argo-executor"
LABELS = {"app.kubernetes.io/managed-by": "k8s-gpu-acceptance-testbed", "app.kubernetes.io/part-of": "argo"}
HEALTHZ = "http://127.0.0.1:6060/healthz"  # the controller's own, port fixed in cmd/workflow-controller


def crds_dir() -> Path:
    """Argo's CRDs as the build copied them from the module source (manifests/base/crds/minimal)."""
    return versions.argo_bin_dir().parent / "crds"


def copy_crds(moddir: Path, target: Path) -> list[Path]:
    """The release's minimal CRDs (those Argo's quick-start installs), copied beside the bin dir."""
    source = moddir / "manifests" / "base" / "crds" / "minimal"
    files = sorted(source.glob("argoproj.io_*.yaml"))
    if not files:
        raise TestbedError(f"no CRDs in {source}: the Argo build recipe needs updating")
    target.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, target / path.name)
    return files


def controller_config(apiserver_port: int) -> dict[str, str]:
    """The controller's ConfigMap data (each key one YAML document, as Argo reads it).

    TESTBED ONLY: every workflow pod on the host network (no kube-proxy routes the `kubernetes` Service's
    ClusterIP; MinIO listens on 127.0.0.1) and the executor pointed at the apiserver on the host.
    Metrics off: the controller would listen on :9090 of this shared host.
    """
    executor = {
        "imagePullPolicy": "IfNotPresent",
        "env": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(apiserver_port)},
        ],
    }
    return {
        "executor": json.dumps(executor),
        "workflowDefaults": json.dumps({"spec": {"hostNetwork": True}}),
        "metricsConfig": json.dumps({"enabled": False}),
        "telemetryConfig": json.dumps({"enabled": False}),
    }


def executor_image_spec(argoexec: Path) -> images.ImageSpec:
    """argoexec alone, on PATH (the emissary init container copies it from there into /var/run/argo)."""
    return images.ImageSpec(
        repository=f"{images.REGISTRY}/argoexec",
        tag_prefix=versions.ARGO_WORKFLOWS_VERSION,
        files={"bin/argoexec": argoexec},
        env=("PATH=/bin",),
        cmd=("/bin/argoexec",),
        elf_closure=False,  # static: CGO_ENABLED=0
    )


@dataclass
class ArgoRuntime:
    """What `start` made, so that `stop` undoes exactly that (a pid of -1: no controller was started)."""

    proc: Proc
    executor_image: str
    crds: list[str]  # CRD names created (not those that already existed)
    objects: list[str]  # "namespace" and/or "clusterrole" when created here


def apiserver_port(api_client: client.ApiClient) -> int:
    """The apiserver's port on this host, from the client's server URL."""
    port = urllib.parse.urlsplit(api_client.configuration.host).port
    if port is None:
        raise TestbedError(f"no port in the apiserver URL {api_client.configuration.host}")
    return port


def apply_crds(api_client: client.ApiClient, directory: Path, timeout: float = 60.0) -> list[str]:
    """Create Argo's CRDs (kept when present) and wait, by watch, until the apiserver serves each."""
    ext = client.ApiextensionsV1Api(api_client)
    created, names = [], []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            doc["metadata"].setdefault("labels", {}).update(LABELS)
            names.append(doc["metadata"]["name"])
            try:
                ext.create_custom_resource_definition(doc, _request_timeout=30)
                created.append(doc["metadata"]["name"])
            except ApiException as exc:
                if exc.status != 409:
                    raise
    pending = set(names)
    deadline = time.monotonic() + timeout
    stream = watch.Watch().stream(
        ext.list_custom_resource_definition, label_selector=_selector(), timeout_seconds=int(timeout)
    )
    for event in stream:
        crd = event["object"]
        conditions = {c.type: c.status for c in crd.status.conditions or []} if crd.status else {}
        if conditions.get("Established") == "True":
            pending.discard(crd.metadata.name)
        if not pending or time.monotonic() > deadline:
            break
    if pending:
        raise TestbedError(f"Argo CRDs not Established within {timeout:.0f} s: {', '.join(sorted(pending))}")
    return created


def _selector() -> str:
    return ",".join(f"{k}={v}" for k, v in LABELS.items())


def apply_objects(api_client: client.ApiClient, port: int) -> list[str]:
    """The controller's namespace and ConfigMap, and the executor's ClusterRole (Argo's emissary minimum).

    Returns which of "namespace", "clusterrole" were created here (not there before)."""
    core, rbac = client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    meta = {"labels": LABELS}
    created = []
    wait_namespace_gone(
        core, CONTROLLER_NAMESPACE
    )  # an earlier run's, still Terminating, would refuse objects
    with contextlib.suppress(_AlreadyExists):
        _create(core.create_namespace, {"metadata": {"name": CONTROLLER_NAMESPACE, **meta}})
        created.append("namespace")
    configmap = {"metadata": {"name": CONFIGMAP, **meta}, "data": controller_config(port)}
    try:
        core.create_namespaced_config_map(CONTROLLER_NAMESPACE, configmap, _request_timeout=30)
    except ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_config_map(CONFIGMAP, CONTROLLER_NAMESPACE, configmap, _request_timeout=30)
    role = {
        "metadata": {"name": EXECUTOR_ROLE, **meta},
        "rules": [
            {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]}
        ],
    }
    with contextlib.suppress(_AlreadyExists):
        _create(rbac.create_cluster_role, role)
        created.append("clusterrole")
    return created


def wait_namespace_gone(core: client.CoreV1Api, name: str, timeout: float = 180.0) -> None:
    """If the namespace is being deleted, watch until it is gone (a namespace takes 1-2 minutes here)."""
    listed = core.list_namespace(field_selector=f"metadata.name={name}", _request_timeout=30)
    if not listed.items or listed.items[0].metadata.deletion_timestamp is None:
        return
    log(f"argo: namespace {name} of an earlier run is still Terminating: waiting until it is gone")
    stream = watch.Watch().stream(
        core.list_namespace,
        field_selector=f"metadata.name={name}",
        resource_version=listed.metadata.resource_version,
        timeout_seconds=int(timeout),
    )
    for event in stream:
        if event["type"] == "DELETED":
            return
    raise TestbedError(f"namespace {name} still Terminating after {timeout:.0f} s")


class _AlreadyExists(Exception):
    """409 from a create: the object is there already."""


def _create(create: Any, body: dict[str, Any]) -> None:
    try:
        create(body, _request_timeout=30)
    except ApiException as exc:
        if exc.status == 409:
            raise _AlreadyExists from exc
        raise


def executor_role_binding(namespace: str, service_account: str = "default") -> dict[str, Any]:
    """Lets a namespace's workflow pods (their service account) report outputs: bind it in each namespace."""
    return {
        "metadata": {"name": "argo-executor", "namespace": namespace, "labels": LABELS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": EXECUTOR_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
    }


def controller_command(bindir: Path, kubeconfig: Path, executor_image: str) -> list[str]:
    """The workflow-controller as a host process, cluster-wide, with the locally built executor image."""
    return [
        str(bindir / "workflow-controller"),
        f"--kubeconfig={kubeconfig}",
        f"--namespace={CONTROLLER_NAMESPACE}",
        f"--configmap={CONFIGMAP}",
        f"--executor-image={executor_image}",
        "--executor-image-pull-policy=IfNotPresent",
        "--workflow-workers=4",
        "--pod-cleanup-workers=2",
    ]


def healthz_answers() -> bool:
    """Something answers 200 on the controller's health port."""
    try:
        with urllib.request.urlopen(HEALTHZ, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def wait_healthy(proc: Proc, timeout: float = 90.0) -> None:
    """The controller's /healthz answers 200 (it has started its informers); fails fast if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exited(proc):
            raise TestbedError(f"workflow-controller exited; its log ({proc.log}):\n{_tail(proc.log)}")
        if healthz_answers():
            return
        time.sleep(0.5)  # no watch exists for a process's HTTP endpoint
    raise TestbedError(f"workflow-controller not healthy within {timeout:.0f} s:\n{_tail(proc.log)}")


def exited(proc: Proc) -> bool:
    """The process is gone (or a zombie). Not `is_alive`: its command-line check was once seen False for a
    controller that had just started and went on running (and `stop` then left it running)."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(proc.pid, os.WNOHANG)[0] == proc.pid:
            return True
    try:
        return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def terminate(proc: Proc) -> None:
    """SIGTERM (the state's `stop`), then SIGKILL if our controller is somehow still there."""
    if not stop_process(proc) and not exited(proc):
        os.kill(proc.pid, signal.SIGKILL)  # the PID this module started, nothing else
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(proc.pid, 0)


def _tail(path: str, chars: int = 3000) -> str:
    return Path(path).read_text(errors="replace")[-chars:] if Path(path).exists() else "(no log)"


def start(api_client: client.ApiClient, kubeconfig: Path, node: dict[str, Any], logdir: Path) -> ArgoRuntime:
    """Build (cached), import the executor image into the real node, apply CRDs + RBAC, run the controller.

    On any failure, what was made so far is undone before the error goes up (nothing is left behind).
    """
    if healthz_answers():  # its port is fixed: another controller's answer would be taken for ours
        raise TestbedError(
            f"{HEALTHZ} answers before our controller started: another workflow-controller runs on this "
            "host (stop it; `python -m testbed down` if `up --argo` started it)"
        )
    t = time.monotonic()
    bindir = ensure_argo_built()
    image = images.build_image(executor_image_spec(bindir / "argoexec"), versions.cache_root() / "images")
    runtime = ArgoRuntime(Proc(pid=-1, exe="", log=""), image.name, [], [])
    try:
        images.import_images(Path(node["bin_dir"]) / "ctr", node["containerd_address"], [image])
        log(f"argo: executor image {image.name} imported ({fmt_duration(time.monotonic() - t)})")
        runtime.crds = apply_crds(api_client, crds_dir())
        runtime.objects = apply_objects(api_client, apiserver_port(api_client))
        env = {**os.environ, "LEADER_ELECTION_DISABLE": "true"}
        env.pop("KUBECONFIG", None)
        command = controller_command(bindir, kubeconfig, image.name)
        runtime.proc = start_process(command, logdir / "workflow-controller.log", env)
        wait_healthy(runtime.proc)
    except BaseException:
        stop(api_client, runtime, node)
        raise
    log(f"argo: workflow-controller {versions.ARGO_WORKFLOWS_VERSION} healthy (pid {runtime.proc.pid}, "
        f"{fmt_duration(time.monotonic() - t)} in all)")  # fmt: skip
    return runtime


def stop(api_client: client.ApiClient, runtime: ArgoRuntime, node: dict[str, Any] | None = None) -> list[str]:
    """Stop the controller, delete what `start` created (workflows go with their CRDs), remove the image."""
    problems: list[str] = []
    if runtime.proc.pid > 0:
        terminate(runtime.proc)
    ext, core = client.ApiextensionsV1Api(api_client), client.CoreV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    deletions: list[tuple[Any, tuple[str, ...]]] = [
        *([(rbac.delete_cluster_role, (EXECUTOR_ROLE,))] if "clusterrole" in runtime.objects else []),
        *([(core.delete_namespace, (CONTROLLER_NAMESPACE,))] if "namespace" in runtime.objects else []),
        *((ext.delete_custom_resource_definition, (name,)) for name in runtime.crds),
    ]
    for delete, args in deletions:
        try:
            delete(*args, _request_timeout=30)
        except ApiException as exc:
            if exc.status != 404:
                problems.append(f"delete {args[0]}: {exc.status} {exc.reason}")
    if node is not None:
        ctr = [str(Path(node["bin_dir"]) / "ctr"), "--address", node["containerd_address"], "-n", "k8s.io"]
        done = subprocess.run([*ctr, "images", "rm", runtime.executor_image], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        if done.returncode != 0 and "not found" not in done.stderr:
            problems.append(f"ctr images rm {runtime.executor_image}: {done.stderr.strip()}")
    return problems


# --- workflows: submit and wait ----------------------------------------------------------------------------

GROUP, VERSION = "argoproj.io", "v1alpha1"
DONE_PHASES = ("Succeeded", "Failed", "Error")
# A pod of the workflow that can never start: end the wait at once with the reason (a busy node's
# "Insufficient cpu" is not here: it passes when the other pods end).
HOPELESS = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "Insufficient nvidia.com/gpu",
    "untolerated taint",
    "didn't match Pod's node affinity/selector",
)


def workflow_problem(workflow: dict[str, Any]) -> str | None:
    """Why a running workflow cannot succeed (a node stuck for a known-bad reason), else None."""
    for node in ((workflow.get("status") or {}).get("nodes") or {}).values():
        message = str(node.get("message") or "")
        if node.get("phase") in ("Pending", "Running") and any(bad in message for bad in HOPELESS):
            return f"step {node.get('displayName')}: {message}"
    return None


def workflow_summary(workflow: dict[str, Any]) -> str:
    """One line per pod node: name, phase, node, message (for failure messages)."""
    status = workflow.get("status") or {}
    lines = [f"workflow {workflow['metadata']['name']}: {status.get('phase')} {status.get('message') or ''}"]
    for node in sorted((status.get("nodes") or {}).values(), key=lambda n: str(n.get("startedAt"))):
        if node.get("type") == "Pod":
            lines.append(
                f"  {node.get('displayName')}: {node.get('phase')} on {node.get('hostNodeName')} "
                f"{node.get('message') or ''}".rstrip()
            )
    return "\n".join(lines)


def wait_workflow(api_client: client.ApiClient, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    """Watch one Workflow until it is done (returned whatever its phase), failing fast on a hopeless step."""
    custom = client.CustomObjectsApi(api_client)
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {"metadata": {"name": name}}
    while (remaining := deadline - time.monotonic()) > 0:
        stream = watch.Watch().stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            "workflows",
            field_selector=f"metadata.name={name}",
            timeout_seconds=max(1, int(min(remaining, 60))),
        )
        for event in stream:
            last = event["object"]
            if (last.get("status") or {}).get("phase") in DONE_PHASES:
                return last
            problem = workflow_problem(last)
            if problem:
                raise TestbedError(f"workflow {namespace}/{name} cannot succeed: {problem}")
    summary = workflow_summary(last)
    raise TestbedError(f"workflow {namespace}/{name} not done within {timeout:.0f} s:\n{summary}")
