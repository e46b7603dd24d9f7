"""`up --gpu-host`'s device plugin wait against the testbed's real kubelet (its failure path needs no GPU).

On the H100 the plugin pod sat in ErrImageNeverPull while `up` waited out its whole deadline for
nvidia.com/gpu. Here NVIDIA's DaemonSet, as gpuhost builds it, runs on the real node with an image the node
does not have: the real kubelet answers ErrImageNeverPull, and the wait must end on it with that reason.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client

from testbed import gpuhost
from testbed.errors import TestbedError
from testbed.node import REAL_NODE_TAINT

SELECTOR = "name=gpuhost-selftest-plugin"


def test_plugin_pod_that_cannot_start_ends_the_wait_with_the_kubelets_reason(
    testbed: Any, testbed_api: client.ApiClient, testbed_namespace: str
) -> None:
    if not testbed.real_node:
        pytest.skip("the testbed runs without its real node (TESTBED_REAL_NODE=0)")
    ds = gpuhost.device_plugin_daemonset(
        "k8s-gpu-acceptance.local/nvidia-device-plugin:not-imported",
        "/opt/kga/bin/nvidia-device-plugin",
        "/opt/kga/bin/nvidia-cdi-hook",
        "selftest",
    )
    # The DaemonSet as gpuhost makes it, moved into this test's namespace, onto the (tainted) real node only,
    # and without the name and labels by which the suite recognises a device plugin: while its namespace is
    # being deleted, later suite runs would otherwise count an unready plugin (seen in a CI rehearsal).
    ds["metadata"].update(
        name="gpuhost-selftest-plugin", namespace=testbed_namespace, labels={"test": "gpuhost"}
    )
    ds["spec"]["selector"] = {"matchLabels": {"name": "gpuhost-selftest-plugin"}}
    template = ds["spec"]["template"]
    template["metadata"]["labels"] = {"name": "gpuhost-selftest-plugin"}
    template["spec"].pop("priorityClassName")  # system-node-critical is for kube-system only
    template["spec"]["nodeSelector"] = {"kubernetes.io/hostname": testbed.real_node}
    template["spec"]["tolerations"].append({**REAL_NODE_TAINT, "operator": "Equal"})
    template["spec"]["volumes"] = [v for v in template["spec"]["volumes"] if "configMap" not in v]
    container = template["spec"]["containers"][0]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "config"]
    client.AppsV1Api(testbed_api).create_namespaced_daemon_set(testbed_namespace, ds)

    started = time.monotonic()
    with pytest.raises(TestbedError) as err:
        gpuhost.wait_gpus_advertised(
            testbed_api, testbed.real_node, 99, 120, namespace=testbed_namespace, selector=SELECTOR
        )
    print(f"the wait ended after {time.monotonic() - started:.1f}s: {err.value}")
    assert "cannot run" in str(err.value)
    assert "ErrImageNeverPull" in str(err.value)
    assert "not-imported" in str(err.value)
