"""The GPU host's pure parts: the device plugin's config and DaemonSet, GFD labels, the bundle round trip."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
from pathlib import Path

import pytest
import yaml

from testbed import gpuhost
from testbed.errors import TestbedError


def test_sharing_config_off_and_time_slicing():
    off = yaml.safe_load(gpuhost.sharing_config(1))
    assert off == {"version": "v1", "flags": {"migStrategy": "none"}}
    shared = yaml.safe_load(gpuhost.sharing_config(4))
    assert shared["sharing"]["timeSlicing"]["resources"] == [{"name": "nvidia.com/gpu", "replicas": 4}]


def test_daemonset_runs_the_imported_image_with_cdi_and_rolls_on_a_new_config():
    ds = gpuhost.device_plugin_daemonset("repo/plugin:v0.19.1-abc", "/opt/bin/plugin", "/opt/bin/hook", "d1")
    pod = ds["spec"]["template"]
    container = pod["spec"]["containers"][0]
    # The exact name the node imported (the H100 run failed with ErrImageNeverPull on a tag without digest).
    assert container["image"] == "repo/plugin:v0.19.1-abc"
    assert container["imagePullPolicy"] == "Never"
    assert "--device-list-strategy=cdi-cri" in container["args"]
    assert "--nvidia-cdi-hook-path=/opt/bin/hook" in container["args"]
    assert pod["metadata"]["annotations"]["testbed.k8s-gpu-acceptance.io/config-digest"] == "d1"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/driver-root"]["readOnly"] is True
    assert set(mounts) >= {"/var/lib/kubelet/device-plugins", "/var/run/cdi", "/config"}
    # The suite recognises it as the device plugin by name and label.
    assert "nvidia-device-plugin" in ds["metadata"]["name"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "nvidia-device-plugin"
    assert gpuhost.config_digest("a") != gpuhost.config_digest("b")


def test_gfd_labels_keep_only_nvidia_keys():
    output = "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3-SHARED\nnvidia.com/gpu.replicas=4\nfoo=bar\n\n"
    assert gpuhost.gfd_labels(output) == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-SHARED",
        "nvidia.com/gpu.replicas": "4",
    }


def _part(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """A bundle part as make_bundle writes it: xz members and bundle.json."""
    part = tmp_path / "part-1"
    part.mkdir()
    members = []
    for name, data in files.items():
        xz = f"{hashlib.sha256(data).hexdigest()}.xz"
        (part / xz).write_bytes(lzma.compress(data))
        digest = hashlib.sha256(data).hexdigest()
        members.append({"name": name, "xz": xz, "sha256": digest, "size": len(data)})
    manifest = {"members": members, "links": {"kubelet": "kube"}, "versions": {}}
    (part / gpuhost.MANIFEST).write_text(json.dumps(manifest))
    return part


def test_unpack_checks_digests_and_makes_links(tmp_path):
    part = _part(tmp_path, {"kube": b"\x7fELF kube", "cni/bridge": b"\x7fELF bridge"})
    bindir = gpuhost.unpack([part], tmp_path / "bin")
    assert (bindir / "kube").read_bytes() == b"\x7fELF kube"
    assert (bindir / "cni" / "bridge").read_bytes() == b"\x7fELF bridge"
    assert os.readlink(bindir / "kubelet") == "kube"
    assert os.access(bindir / "kube", os.X_OK)
    gpuhost.unpack([part], bindir)  # again: unchanged files are kept, links stay


def test_unpack_refuses_a_damaged_part(tmp_path):
    part = _part(tmp_path, {"kube": b"\x7fELF kube"})
    manifest = json.loads((part / gpuhost.MANIFEST).read_text())
    manifest["members"][0]["sha256"] = "0" * 64
    (part / gpuhost.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(TestbedError, match="damaged in transit"):
        gpuhost.unpack([part], tmp_path / "bin")


def test_check_bin_dir_names_what_is_missing(tmp_path):
    with pytest.raises(TestbedError, match="unpack-bundle") as err:
        gpuhost.check_bin_dir(tmp_path)
    assert "nvidia-device-plugin" in str(err.value)


def test_node_name_is_dns_1123():
    name = gpuhost.node_name()
    assert name and len(name) <= 63
    assert all((c.isalnum() and c.islower()) or c.isdigit() or c == "-" for c in name)


def test_python_environment_of_this_interpreter_and_one_without_torch(tmp_path):
    import sys

    paths, torch_version = gpuhost.python_environment(sys.executable)
    assert all(Path(p).is_dir() for p in paths)
    assert torch_version  # the dev environment has torch
    with pytest.raises(TestbedError, match="cannot run"):
        gpuhost.python_environment(str(tmp_path / "no-python"))
