"""What `up` started, written down so that `down` stops exactly that (by PID) and `env` can print it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from testbed import versions


def state_dir() -> Path:
    """The running testbed's state (override: TESTBED_STATE_DIR)."""
    override = os.environ.get("TESTBED_STATE_DIR")
    return Path(override) if override else versions.cache_root() / "state"


@dataclass
class Proc:
    """A process `up` started: its PID and the executable, checked before signalling (PIDs get reused)."""

    pid: int
    exe: str
    log: str


@dataclass
class State:
    """Everything `down`, `status` and `env` need; saved as state.json in the state dir."""

    cluster_name: str
    kwok_workdir: str
    kubeconfig: str
    bin_dir: str
    s3_endpoint: str
    credentials_file: str
    minio_data_dir: str
    recordings_dir: str = ""
    region: str = "us-east-1"
    procs: dict[str, Proc] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)
    started_at: float = 0.0
    gpu_host: dict[str, Any] = field(default_factory=dict)  # testbed.gpuhost.GpuHost, on a real GPU host
    real_node: dict[str, Any] = field(default_factory=dict)  # testbed.node.NodeState, when the real node runs
    argo: dict[str, Any] = field(default_factory=dict)  # `up --argo`: executor image, CRDs (testbed/argo.py)
    # Keys this version does not know, written by another version's `up` (the testbed is one per machine,
    # several checkouts use it): kept as they were and saved back, never dropped, so that version's `down`
    # still finds what it started.
    unknown: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path | None = None) -> State | None:
        """The saved state, or None when no testbed was brought up."""
        path = (directory or state_dir()) / "state.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        data["procs"] = {k: Proc(**v) for k, v in data.get("procs", {}).items()}
        known = {f.name for f in fields(cls)} - {"unknown"}
        unknown = {k: data.pop(k) for k in sorted(set(data) - known)}
        return cls(**data, unknown=unknown)

    def save(self, directory: Path | None = None) -> None:
        """Write atomically: a crash never leaves half a state file."""
        directory = directory or state_dir()
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "state.json.tmp"
        data = asdict(self)
        data.update(data.pop("unknown"))
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, directory / "state.json")

    def credentials(self) -> dict[str, str]:
        """MinIO's access key and secret (kept in a 0600 file, not in state.json)."""
        data: dict[str, str] = json.loads(Path(self.credentials_file).read_text())
        return data


def write_private(path: Path, text: str) -> None:
    """Create a file only its owner can read (credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


@contextlib.contextmanager
def locked(directory: Path | None = None) -> Iterator[None]:
    """One `up`/`down` at a time (parallel pytest sessions share one testbed)."""
    root = versions.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / "testbed.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Proc:
    """Start a background process in its own session, output to a log file."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return Proc(pid=proc.pid, exe=args[0], log=str(log))


def is_alive(proc: Proc) -> bool:
    """Alive, not a zombie, and still the program we started (not a reused PID)."""
    reap(proc.pid)
    try:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return any(arg.decode(errors="replace") == proc.exe for arg in cmdline[:2])


def reap(pid: int) -> None:
    """Collect the exit status if the process is our child (when `up` ran in this process, e.g. pytest)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(proc: Proc, timeout: float = 15.0) -> bool:
    """SIGTERM exactly this PID (if it is still ours), SIGKILL after `timeout`. True if it was running."""
    if not is_alive(proc):
        return False
    os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(proc):
            return True
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    while is_alive(proc):
        time.sleep(0.1)
    return True
