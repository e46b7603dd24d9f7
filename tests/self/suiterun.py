"""Running the suite as a user runs it: a pytest subprocess with its own run id and report dir.

Shared by the self-tests that run the suite against the testbed (kwok nodes and the real node).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MARKERS = "gpu and not sharing and not isolation and not exhaustion"


class SuiteRun:
    """One subprocess run of `pytest -m gpu` with its own run id and report dir."""

    def __init__(self, returncode: int, output: str, run_id: str, report_dir: Path, wall_s: float):
        self.ret = returncode
        self.output = output
        self.run_id = run_id
        self.report_dir = report_dir
        self.wall_s = wall_s

    @property
    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.report_dir / "report.json").read_text())
        return data

    def layer(self, name: str) -> dict[str, Any]:
        return next(entry for entry in self.report["layers"] if entry["name"] == name)


def suite_command(report_dir: Path, *args: str, markers: str = DEFAULT_MARKERS) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        f"--rootdir={REPO}",
        "-c",
        str(REPO / "pytest.ini"),
        str(REPO / "tests" / "gpu"),
        "-m",
        markers,
        f"--report-dir={report_dir}",
        "--pod-timeout=60",
        *args,
    ]


def assert_nothing_left(leftovers: Any, run_id: str) -> None:
    left = leftovers(f"k8s-gpu-acceptance/run-id={run_id}")
    assert not left, f"run {run_id} left objects behind: {left}"


def pod_log(core: Any, name: str, namespace: str, container: str | None = None) -> str:
    """A pod's log as text. Read raw: the client's own decoding differs between versions (36 returned a
    JSON-looking log as a bytes repr, "b'{...")."""
    kwargs = {"container": container} if container else {}
    response = core.read_namespaced_pod_log(name, namespace, _preload_content=False, **kwargs)
    return str(response.data.decode("utf-8", errors="replace"))
