"""Did `down` leave this host as `up` found it? A snapshot of what the testbed can change, and a diff.

`up` saves a snapshot (the baseline) before it starts anything; `python -m testbed check-clean` compares the
host with it after `down` and lists every process, mount, cgroup, network link, sysctl, host path, iptables
rule and device-plugin socket that is new or changed. CI runs it after its final `down` (.ci/run).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from testbed import versions
from testbed.node import (
    DEVICE_PLUGIN_DIR,
    HOST_PATHS,
    SYSCTLS,
    cgroup_roots,
    iptables_rules,
    mount_points,
    read_sysctls,
)
from testbed.state import state_dir

Snapshot = dict[str, Any]


def baseline_path() -> Path:
    """Beside the state dir, not in it: `down` removes the state dir, the baseline must outlive it."""
    return versions.cache_root() / "host-baseline.json"


def _testbed_process(pid: str, roots: tuple[str, ...]) -> str | None:
    """`pid exe` for a process of the testbed: its binary is in our cache, it runs in a kubepods cgroup (a
    container of the real node), or its command line names our state dir (the recording controller)."""
    proc = Path("/proc", pid)
    try:
        exe = os.readlink(proc / "exe")
        cgroups = (proc / "cgroup").read_text()
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if exe.startswith(roots) or "/kubepods" in cgroups or str(state_dir()) in cmdline:
        return f"{pid} {exe}"
    return None


def snapshot() -> Snapshot:
    """Everything the testbed may leave behind, as plain JSON data."""
    roots = (str(versions.cache_root()), str(state_dir()))
    watched = (str(state_dir()), *HOST_PATHS)
    processes = sorted(filter(None, (_testbed_process(p, roots) for p in os.listdir("/proc") if p.isdigit())))
    cgroups = []
    for root in cgroup_roots():
        with contextlib.suppress(OSError):
            cgroups += [str(d) for d in root.iterdir() if d.is_dir()]
    return {
        "processes": processes,
        "mounts": sorted(
            {m for m in mount_points() if any(m == w or m.startswith(w.rstrip("/") + "/") for w in watched)}
        ),
        "cgroups": sorted(cgroups),
        "links": sorted(os.listdir("/sys/class/net")),
        "sysctls": read_sysctls(SYSCTLS),
        "paths": sorted(p for p in HOST_PATHS if os.path.lexists(p)),
        "iptables": iptables_rules(),
        "device_plugin_files": sorted(os.listdir(DEVICE_PLUGIN_DIR)) if DEVICE_PLUGIN_DIR.is_dir() else [],
    }


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    """What `after` has that `before` did not (pure: unit-tested on made-up snapshots)."""
    found: list[str] = []
    for key, what in (
        ("processes", "process"),
        ("mounts", "mount"),
        ("cgroups", "cgroup"),
        ("links", "network link"),
        ("paths", "host path"),
        ("device_plugin_files", f"file in {DEVICE_PLUGIN_DIR}"),
    ):
        old = set(before.get(key, []))
        found += [f"{what} {item}" for item in after.get(key, []) if item not in old]
    for name, value in after.get("sysctls", {}).items():
        if name in before.get("sysctls", {}) and before["sysctls"][name] != value:
            found.append(f"sysctl {name} = {value} (was {before['sysctls'][name]})")
    for table, rules in after.get("iptables", {}).items():
        old_rules = set(before.get("iptables", {}).get(table, []))
        found += [f"iptables {table}: {r}" for r in rules if r not in old_rules]
    return found


def save_baseline(data: Snapshot) -> None:
    """Written by `up` before it starts anything."""
    path = baseline_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def load_baseline() -> Snapshot | None:
    """The snapshot `up` took, if any."""
    path = baseline_path()
    return json.loads(path.read_text()) if path.exists() else None
