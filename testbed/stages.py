"""kwok Stages: how simulated pods move through their lifecycle. SIMULATED: kwok runs no container.

kwok's default stages (verbatim in kwok-default-stages.yaml) make every bound pod Running and Ready. The
testbed narrows that and adds its own simulated kubelet behaviour:

- a pod labelled `k8s-gpu-acceptance/role=probe` moves to Succeeded once the recording controller has attached
  its log (annotation `testbed.k8s-gpu-acceptance.io/logs-ready=true`), or to Failed when the recording it
  names does not exist (annotation `.../recording-error`, shown as the container's termination message);
- a pod with an image whose name contains `does-not-exist` never runs: its containers wait with ErrImagePull,
  then ImagePullBackOff, as a kubelet reports an image that cannot be pulled.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

PROBE_LABEL = "k8s-gpu-acceptance/role"
PROBE_VALUE = "probe"
ANNOTATION_PREFIX = "testbed.k8s-gpu-acceptance.io"
RECORDING_ANNOTATION = f"{ANNOTATION_PREFIX}/recording"
LOGS_READY_ANNOTATION = f"{ANNOTATION_PREFIX}/logs-ready"
RECORDING_ERROR_ANNOTATION = f"{ANNOTATION_PREFIX}/recording-error"
MISSING_IMAGE_MARKER = "does-not-exist"

_PULL_FAILS = f'.spec.containers.[].image | contains("{MISSING_IMAGE_MARKER}")'
_WAITING_REASON = ".status.containerStatuses.[].state.waiting.reason"


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    """One kwok selector requirement: `key` is a jq query on the object."""
    out: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        out["values"] = list(values)
    return out


def pod_stage(name: str, selector: list[dict[str, Any]], template: str, delay_ms: int = 0) -> dict[str, Any]:
    """A Stage that patches a matching pod's status with the rendered template."""
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
        "selector": {"matchExpressions": [expr(".metadata.deletionTimestamp", "DoesNotExist"), *selector]},
        "next": {"statusTemplate": template},
    }
    if delay_ms:
        spec["delay"] = {"durationMilliseconds": delay_ms}
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name}, "spec": spec}


def _annotation(key: str) -> str:
    return f'.metadata.annotations["{key}"]'


_PROBE_RUNNING = [
    expr(".status.phase", "In", "Running"),
    expr(f'.metadata.labels["{PROBE_LABEL}"]', "In", PROBE_VALUE),
]

_TERMINATED = """\
{{ $now := Now }}
{{ $root := . }}
conditions:
- {type: Ready, status: "False", reason: PodCompleted, lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "False", reason: PodCompleted, lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range $index, $item := .spec.containers }}
- image: {{ $item.image | Quote }}
  name: {{ $item.name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: EXIT_CODE
      reason: REASON
      message: MESSAGE
      startedAt: {{ or $root.status.startTime $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
phase: PHASE
"""


def _terminated(phase: str, exit_code: int, reason: str, message: str) -> str:
    return (
        _TERMINATED.replace("EXIT_CODE", str(exit_code))
        .replace("REASON", reason)
        .replace("MESSAGE", message)
        .replace("PHASE", phase)
    )


_PULL_WAITING = """\
{{ $now := Now }}
conditions:
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "False", reason: ContainersNotReady, lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "False", reason: ContainersNotReady, lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    waiting:
      {{ if contains "MARKER" .image }}
      reason: REASON
      message: {{ printf "MESSAGE" .image | Quote }}
      {{ else }}
      reason: ContainerCreating
      {{ end }}
{{ end }}
{{ with NodeIPWith .spec.nodeName }}
hostIP: {{ . | Quote }}
{{ end }}
phase: Pending
startTime: {{ or .status.startTime $now | Quote }}
"""


def _pull_waiting(reason: str, message: str) -> str:
    return (
        _PULL_WAITING.replace("MARKER", MISSING_IMAGE_MARKER)
        .replace("REASON", reason)
        .replace("MESSAGE", message)
    )


def testbed_stages() -> list[dict[str, Any]]:
    """The testbed's own simulated kubelet behaviour (see the module docstring)."""
    return [
        pod_stage(
            "testbed-probe-succeeded",
            [*_PROBE_RUNNING, expr(_annotation(LOGS_READY_ANNOTATION), "In", "true")],
            _terminated("Succeeded", 0, "Completed", '""'),
        ),
        pod_stage(
            "testbed-probe-recording-missing",
            [*_PROBE_RUNNING, expr(_annotation(RECORDING_ERROR_ANNOTATION), "Exists")],
            _terminated(
                "Failed",
                1,
                "RecordingNotFound",
                f'{{{{ index $root.metadata.annotations "{RECORDING_ERROR_ANNOTATION}" | Quote }}}}',
            ),
        ),
        pod_stage(
            "testbed-image-pull-error",
            [
                expr(".status.phase", "In", "Pending"),
                expr(_PULL_FAILS, "In", "true"),
                expr(_WAITING_REASON, "NotIn", "ErrImagePull", "ImagePullBackOff"),
            ],
            _pull_waiting(
                "ErrImagePull",
                'failed to pull and unpack image \\"%s\\": not found (simulated by the testbed)',
            ),
        ),
        pod_stage(
            "testbed-image-pull-backoff",
            [
                expr(".status.phase", "In", "Pending"),
                expr(_PULL_FAILS, "In", "true"),
                expr(_WAITING_REASON, "In", "ErrImagePull"),
            ],
            _pull_waiting("ImagePullBackOff", 'Back-off pulling image \\"%s\\" (simulated by the testbed)'),
            delay_ms=1000,
        ),
    ]


def kwok_stages() -> list[dict[str, Any]]:
    """kwok's default stages with pod-ready narrowed, followed by the testbed's stages."""
    text = resources.files("testbed").joinpath("kwok-default-stages.yaml").read_text()
    stages = [doc for doc in yaml.safe_load_all(text) if doc]
    for stage in stages:
        if stage["metadata"]["name"] == "pod-ready":
            # A pod whose image cannot be pulled never becomes Running.
            stage["spec"]["selector"]["matchExpressions"].append(expr(_PULL_FAILS, "NotIn", "true"))
    return stages + testbed_stages()


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the templates) as `|` blocks, so the generated file stays readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_BlockDumper.add_representer(str, _str)


def kwok_config_yaml() -> str:
    """The multi-document file handed to `kwokctl create cluster --config`."""
    return yaml.dump_all(kwok_stages(), Dumper=_BlockDumper, sort_keys=False)
