"""The recording controller: gives each simulated probe pod its recorded log. SIMULATED execution.

kwok runs no container, and its ClusterLogs select pods by namespace/name only. So this small background
process (started by `python -m testbed up`, PID tracked, stopped by `down`) watches pods labelled
`k8s-gpu-acceptance/role=probe` and, for each one that kwok has made Running:

1. picks the recording of each container (annotation `testbed.k8s-gpu-acceptance.io/recording` on the pod,
   else on its node; else a recording named by the suite's `k8s-gpu-acceptance/scenario` annotation,
   `<scenario>-<container>` or `<scenario>`, when one exists; else `h100` for a container requesting
   `nvidia.com/gpu`, else `cpu`);
2. creates a kwok `Logs` object named like the pod (owned by it, so the garbage collector removes it) that
   points each container at a CRI-format copy of its recording;
3. waits until `pods/log` through the real apiserver returns the recording, then annotates the pod
   `.../logs-ready=true`; only then does the kwok Stage move the pod to Succeeded.

A missing recording is annotated `.../recording-error`, and a Stage makes the pod Failed with that message.

It shares the machine's cores with the control plane and the suite it serves (a 1000-node sweep on 2 cores),
so it reads the API as JSON (no client models: their timestamp parsing was most of its CPU time) and polls
a log with a growing interval.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from testbed.recordings import container_recordings, cri_log_file, recording_path, recordings_dir
from testbed.stages import LOGS_READY_ANNOTATION, PROBE_LABEL, PROBE_VALUE, RECORDING_ERROR_ANNOTATION

HOLD_ANNOTATION = "testbed.k8s-gpu-acceptance.io/hold"

LOG = logging.getLogger("testbed.controller")
KWOK_GROUP, KWOK_VERSION, LOGS_PLURAL = "kwok.x-k8s.io", "v1alpha1", "logs"
SERVE_TIMEOUT_S = 20.0
FIRST_POLL_S, MAX_POLL_S = 0.02, 0.5


class RawWatch(watch.Watch):
    """The client's watch with its events' objects left as API JSON (no return type: no models)."""

    def get_return_type(self, func: Any) -> None:
        return None


def api_json(call: Any, *args: Any, **kwargs: Any) -> Any:
    """One API call's JSON body, without the client's model deserialization."""
    response = call(*args, **kwargs, _preload_content=False)
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


class RecordingController:
    """Attach recordings to probe pods, each pod once."""

    def __init__(self, api_client: client.ApiClient, cri_cache: Path, workers: int = 8) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.cri_cache = cri_cache
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recording")
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.kwok_nodes: dict[str, bool] = {}

    def is_kwok_node(self, name: str) -> bool:
        """Only kwok's (simulated) nodes get recordings: a pod on the real node (testbed/node.py) really
        runs and its log is its own. A name is the same node for the testbed's life: the answer is cached."""
        if name not in self.kwok_nodes:
            try:
                annotations = api_json(self.core.read_node, name)["metadata"].get("annotations") or {}
                self.kwok_nodes[name] = annotations.get("kwok.x-k8s.io/node") == "fake"
            except ApiException:
                return False
        return self.kwok_nodes[name]

    def wants(self, pod: dict[str, Any]) -> bool:
        """A Running probe pod that has neither its log nor an error yet, and is not already being handled.

        A pod annotated HOLD_ANNOTATION=true is left Running without a log until the annotation goes (a
        SIMULATED slow probe: self-tests interrupt the suite while its probe pod is certainly in flight).
        """
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        annotations = meta.get("annotations") or {}
        if (pod.get("status") or {}).get("phase") != "Running" or meta.get("deletionTimestamp"):
            return False
        if annotations.get(HOLD_ANNOTATION) == "true":
            return False
        if LOGS_READY_ANNOTATION in annotations or RECORDING_ERROR_ANNOTATION in annotations:
            return False
        if not spec.get("nodeName") or not self.is_kwok_node(spec["nodeName"]):
            return False
        with self.lock:
            if meta["uid"] in self.seen:
                return False
            self.seen.add(meta["uid"])
        return True

    def handle(self, pod: dict[str, Any]) -> None:
        """Steps 1-3 of the module docstring, with any failure logged (the pod then stays Running)."""
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        try:
            chosen = container_recordings(
                meta.get("annotations"), pod["spec"], node_annotations=self.node_notes(pod)
            )
            paths = {container: recording_path(rec) for container, rec in chosen.items()}
            missing = sorted({str(p) for p in paths.values() if not p.is_file()})
            if missing:
                message = (
                    "testbed: recording "
                    + ", ".join(repr(r) for r in sorted(set(chosen.values())))
                    + f" not found ({', '.join(missing)})"
                )
                LOG.warning("%s/%s: %s", ns, name, message)
                self.annotate(ns, name, RECORDING_ERROR_ANNOTATION, message)
                return
            self.put_logs(pod, {c: cri_log_file(p, self.cri_cache) for c, p in paths.items()})
            reads = sum(self.wait_served(ns, name, c, path.read_bytes()) for c, path in paths.items())
            self.annotate(ns, name, LOGS_READY_ANNOTATION, "true")
            LOG.info("%s/%s: log is recording %r (%d log reads)", ns, name, chosen, reads)
        except Exception:
            LOG.exception("%s/%s: could not attach a recording", ns, name)
            with self.lock:
                self.seen.discard(meta["uid"])

    def node_notes(self, pod: dict[str, Any]) -> dict[str, str]:
        """The annotations of the pod's node, read when the pod runs (a self-test may have just set one)."""
        node = (pod.get("spec") or {}).get("nodeName")
        if not node:
            return {}
        try:
            return dict(api_json(self.core.read_node, node)["metadata"].get("annotations") or {})
        except ApiException as exc:
            LOG.warning("node %s: annotations not readable (%s)", node, exc.status)
            return {}

    def put_logs(self, pod: dict[str, Any], logs_files: dict[str, Path]) -> None:
        """Create (or repoint) the kwok Logs object of this pod: one entry per container."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        body: dict[str, Any] = {
            "apiVersion": f"{KWOK_GROUP}/{KWOK_VERSION}",
            "kind": "Logs",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {"app.kubernetes.io/managed-by": "k8s-gpu-acceptance-testbed"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod["metadata"]["uid"]}
                ],
            },
            "spec": {
                "logs": [
                    {"containers": [container], "logsFile": str(path), "follow": False}
                    for container, path in logs_files.items()
                ]
            },
        }
        try:
            self.custom.create_namespaced_custom_object(KWOK_GROUP, KWOK_VERSION, ns, LOGS_PLURAL, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # A pod of the same name existed before: point its leftover Logs at this pod and file.
            self.custom.patch_namespaced_custom_object(KWOK_GROUP, KWOK_VERSION, ns, LOGS_PLURAL, name, body)

    def wait_served(self, ns: str, name: str, container: str, expected: bytes) -> int:
        """kwok loads Logs objects asynchronously: release the pod only once its log is really served.

        Polled at 20 ms, then each interval 1.5 times the last up to 0.5 s: each read goes through the API
        server to kwok, and at 1000 pods a fixed short interval made those reads a load of their own.
        Returns how many reads it took."""
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        last, reads, interval = "", 0, FIRST_POLL_S
        while time.monotonic() < deadline:
            reads += 1
            try:
                resp = self.core.read_namespaced_pod_log(
                    name, ns, container=container, _preload_content=False
                )
                got = resp.data
                if got == expected:
                    return reads
                last = f"served {len(got)} bytes, recording has {len(expected)}"
            except ApiException as exc:
                last = f"HTTP {exc.status}: {exc.body!r}"[:300]
            time.sleep(interval)
            interval = min(MAX_POLL_S, interval * 1.5)
        raise TimeoutError(f"log of {ns}/{name} not served within {SERVE_TIMEOUT_S}s ({reads} reads): {last}")

    def annotate(self, ns: str, name: str, key: str, value: str) -> None:
        """Merge-patch one annotation onto the pod (the kwok Stages select on it)."""
        patch = {"metadata": {"annotations": {key: value}}}
        api_json(self.core.patch_namespaced_pod, name, ns, patch)

    def run(self, ready_file: Path | None = None) -> None:
        """List, then watch from the list's resourceVersion; relist when the watch expires."""
        selector = f"{PROBE_LABEL}={PROBE_VALUE}"
        while True:
            listed = api_json(self.core.list_pod_for_all_namespaces, label_selector=selector)
            for pod in listed.get("items") or []:
                self.offer(pod)
            if ready_file is not None:
                ready_file.touch()
                ready_file = None
            version = listed["metadata"]["resourceVersion"]
            try:
                for event in RawWatch().stream(
                    self.core.list_pod_for_all_namespaces,
                    label_selector=selector,
                    resource_version=version,
                    timeout_seconds=300,
                    allow_watch_bookmarks=True,
                ):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.offer(event["object"])
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: the resourceVersion expired; relist
                    LOG.warning("watch failed (%s); relisting", exc.status)
                    time.sleep(1)

    def offer(self, pod: dict[str, Any]) -> None:
        """Hand a pod to the worker pool if it needs its recording."""
        if self.wants(pod):
            self.pool.submit(self.handle, pod)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the background process started by `python -m testbed up`."""
    parser = argparse.ArgumentParser(prog="python -m testbed.controller", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--cri-cache", required=True, type=Path)
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(threadName)s %(message)s"
    )
    LOG.info("recordings from %s", recordings_dir())
    api_client = config.new_client_from_config(config_file=args.kubeconfig)
    RecordingController(api_client, args.cri_cache).run(args.ready_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
