"""The real node's pure parts, without a running testbed: image archives, configs, the leftovers diff."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from testbed import cluster, hostcheck, images
from testbed.node import NodeState, cni_config, kubelet_config


def _state(**kw: object) -> NodeState:
    base = {
        "name": "n",
        "dir": "/tmp/n",
        "bin_dir": "/b",
        "containerd_address": "/tmp/n/c.sock",
        "kubelet_port": 1,
        "cgroup_version": 1,
        "iptables": False,
        "node_ip": "192.0.2.2",
    }
    return NodeState(**(base | kw))  # type: ignore[arg-type]


def test_oci_archive_names_the_image_and_its_layer_matches_the_config(tmp_path: Path) -> None:
    root = tmp_path / "host"
    (root / "real" / "sub").mkdir(parents=True)
    (root / "real" / "sub" / "f.txt").write_text("hello")
    (root / "linked").symlink_to("real")  # a symlinked parent, like /lib -> usr/lib
    spec = images.ImageSpec(
        repository="k8s-gpu-acceptance.local/t",
        tag_prefix="v1",
        paths=(str(root / "linked" / "sub" / "f.txt"),),
        files={"etc/passwd": b"probe:x:10001:10001::/tmp:/bin/sh\n"},
        user="10001",
        elf_closure=False,
    )
    built = images.build_image(spec, tmp_path / "cache")
    assert built.name.startswith("k8s-gpu-acceptance.local/t:v1-")
    assert images.build_image(spec, tmp_path / "cache") == built  # cached by content
    with tarfile.open(built.archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        desc = index["manifests"][0]
        assert desc["annotations"]["io.containerd.image.name"] == built.name
        manifest = json.load(tar.extractfile(f"blobs/sha256/{desc['digest'].split(':')[1]}"))  # type: ignore[arg-type]
        config = json.load(tar.extractfile(f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"))  # type: ignore[arg-type]
        layer = tar.extractfile(f"blobs/sha256/{manifest['layers'][0]['digest'].split(':')[1]}").read()  # type: ignore[union-attr]
    assert config["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(layer).hexdigest()}"]
    assert config["config"]["User"] == "10001"
    with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
        members = {m.name: m for m in inner.getmembers()}
    link = str(root / "linked").lstrip("/")
    assert members[link].issym() and members[link].linkname == "real"
    assert members[str(root / "real" / "sub" / "f.txt").lstrip("/")].size == 5
    assert all(m.uid == 0 for m in members.values())
    assert "etc/passwd" in members


def test_probe_image_has_this_hosts_python_and_its_libraries() -> None:
    entries = images.collect(images.probe_image_spec())
    assert any(p.startswith("usr/lib/python3") and p.endswith("/json/__init__.py") for p in entries)
    libc = [p for p, e in entries.items() if os.path.basename(p).startswith("libc.so") and e.kind == "file"]
    assert libc, "the ELF closure of python3 must bring libc"
    assert not any("/test/" in p for p in entries if p.startswith("usr/lib/python3"))


def test_masquerading_and_portmap_only_where_iptables_exists() -> None:
    without = cni_config(_state(iptables=False))
    assert [p["type"] for p in without["plugins"]] == ["bridge"] and not without["plugins"][0]["ipMasq"]
    with_ipt = cni_config(_state(iptables=True))
    assert [p["type"] for p in with_ipt["plugins"]] == ["bridge", "portmap"] and with_ipt["plugins"][0][
        "ipMasq"
    ]


def test_kubelet_accepts_cgroup_v1_only_when_the_host_has_it() -> None:
    assert kubelet_config(_state(cgroup_version=1), Path("/ca"))["failCgroupV1"] is False
    v2 = kubelet_config(_state(cgroup_version=2), Path("/ca"))
    assert "failCgroupV1" not in v2 and v2["oomScoreAdj"] == 0 and v2["cgroupDriver"] == "cgroupfs"


def test_kwok_manages_only_the_simulated_nodes(tmp_path: Path) -> None:
    patches = {p["name"]: p["extraArgs"] for p in cluster.kwokctl_patches(tmp_path)["componentsPatches"]}
    kwok = {a["key"]: a["value"] for a in patches["kwok-controller"]}
    assert kwok == {
        "manage-all-nodes": "false",
        "manage-nodes-with-annotation-selector": "kwok.x-k8s.io/node=fake",
    }
    apiserver = {a["key"]: a["value"] for a in patches["kube-apiserver"]}
    assert apiserver["kubelet-preferred-address-types"].startswith("InternalIP")


def test_leftovers_are_what_is_new_or_changed_since_the_baseline() -> None:
    before = {
        "processes": ["1 /sbin/init"],
        "mounts": [],
        "cgroups": ["/sys/fs/cgroup/memory/agent"],
        "links": ["eth0", "lo"],
        "sysctls": {"vm.overcommit_memory": "0"},
        "paths": [],
        "iptables": {},
        "device_plugin_files": [],
    }
    assert hostcheck.differences(before, before) == []
    after = json.loads(json.dumps(before))
    after["cgroups"].append("/sys/fs/cgroup/memory/kubepods")
    after["links"].append("kgacni0")
    after["sysctls"]["vm.overcommit_memory"] = "1"
    after["paths"].append("/var/lib/kubelet")
    after["mounts"].append("/run/containerd/x")
    found = hostcheck.differences(before, after)
    assert found == [
        "mount /run/containerd/x",
        "cgroup /sys/fs/cgroup/memory/kubepods",
        "network link kgacni0",
        "host path /var/lib/kubelet",
        "sysctl vm.overcommit_memory = 1 (was 0)",
    ]
