"""Cluster add-ons a GPU cluster has: the NVIDIA device plugin DaemonSet and the `nvidia` RuntimeClass.

The DaemonSet is real to the control plane (the DaemonSet controller creates its pods, the scheduler binds
them); the pods are SIMULATED by kwok, which marks them Ready without running the image.
"""

from __future__ import annotations

from typing import Any

from testbed.nodes import SCENARIO_TAINT_KEY
from testbed.versions import DEVICE_PLUGIN_IMAGE

DEVICE_PLUGIN_NAME = "nvidia-device-plugin-daemonset"
DEVICE_PLUGIN_SELECTOR = {"name": "nvidia-device-plugin-ds"}


def device_plugin_daemonset() -> dict[str, Any]:
    """Upstream's static manifest (deployments/static/nvidia-device-plugin.yml): name, labels, toleration.

    One addition, as the Helm chart and GPU Operator do: node affinity to GPU nodes
    (`nvidia.com/gpu.present=true`), so no plugin pod is placed on cpu-node.
    """
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": DEVICE_PLUGIN_NAME, "namespace": "kube-system"},
        "spec": {
            "selector": {"matchLabels": dict(DEVICE_PLUGIN_SELECTOR)},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": dict(DEVICE_PLUGIN_SELECTOR)},
                "spec": {
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                        # The testbed's sharing/MIG scenario nodes (testbed/nodes.py) need their plugin too.
                        {"key": SCENARIO_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"},
                    ],
                    "priorityClassName": "system-node-critical",
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {
                                                "key": "nvidia.com/gpu.present",
                                                "operator": "In",
                                                "values": ["true"],
                                            }
                                        ]
                                    }
                                ]
                            }
                        }
                    },
                    "containers": [
                        {
                            "image": DEVICE_PLUGIN_IMAGE,
                            "name": "nvidia-device-plugin-ctr",
                            "env": [{"name": "FAIL_ON_INIT_ERROR", "value": "false"}],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "device-plugin", "mountPath": "/var/lib/kubelet/device-plugins"}
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "device-plugin", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}}
                    ],
                },
            },
        },
    }


def nvidia_runtime_class() -> dict[str, Any]:
    """The RuntimeClass the GPU Operator creates; pods name it with runtimeClassName: nvidia."""
    return {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": "nvidia"},
        "handler": "nvidia",
    }
