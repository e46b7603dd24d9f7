"""CNCF Kubernetes AI Conformance (v1.35 requirements): which of the suite's checks bear on which requirement,
and the evidence a run gives for each.

Owns the requirement table, the `ai_conformance` marker's meaning, the folding of test outcomes into one
status per requirement (pure, unit-tested), the report.json section, the HTML section and the fragment
`--conformance-out` writes. The fragment uses the submission template's fields per requirement (`id`,
`status`: Implemented | Not Implemented, `evidence`, `notes`) and lists ONLY requirements that at least one
check of this run really assessed (passed or failed); a requirement whose checks were all skipped (no DCGM
exporter, no sharing node, a device-plugin run for dra_support) is left out, never claimed.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

VERSION = "v1.35"
MARKER = "ai_conformance"
JUNIT_PROPERTY = "ai_conformance"


@dataclass(frozen=True)
class Requirement:
    """One AI Conformance requirement the suite can evidence, and how it does."""

    id: str
    category: str
    title: str
    how: str


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement(
        "dra_support",
        "accelerators",
        "DRA support",
        "with --allocation dra: DeviceClass gpu.nvidia.com and ResourceSlices publish GPUs (allocation "
        "layer); the scheduler allocates the probe pod's ResourceClaim and the pod runs on its GPUs",
    ),
    Requirement(
        "driver_runtime_management",
        "accelerators",
        "Driver and runtime management",
        "the driver, NVML and device nodes work in a pod, and the CUDA runtime of the image fits the driver "
        "(driver, torch_cuda layers; driverVersion/cudaDriverVersion from ResourceSlices under DRA)",
    ),
    Requirement(
        "gpu_sharing",
        "accelerators",
        "GPU sharing",
        "time-slicing, MPS and MIG as the cluster advertises them, measured in pods (sharing checks)",
    ),
    Requirement(
        "accelerator_metrics",
        "observability",
        "Accelerator metrics",
        "a DCGM exporter exposes per-GPU utilization, memory, temperature and power series",
    ),
    Requirement(
        "secure_accelerator_access",
        "security",
        "Secure accelerator access",
        "a pod without a GPU request sees no GPU; each pod sees only its allocated GPUs; probe pods run "
        "unprivileged with all capabilities dropped (isolation checks); one-GPU pods at once each see only "
        "their own GPU (distinct GPUs)",
    ),
)
BY_ID: dict[str, Requirement] = {r.id: r for r in REQUIREMENTS}
# A check counts for a requirement only in runs that exercise it: the allocation layers evidence DRA only
# when the GPUs came through a claim.
ONLY_WITH_ALLOCATION: dict[str, str] = {"dra_support": "dra"}
RANK = {"passed": 0, "skipped": 1, "blocked": 2, "failed": 3, "error": 4}


@dataclass
class Check:
    """One test's result as evidence for one requirement."""

    requirement: str
    test: str  # the pytest node id
    outcome: str  # passed | skipped | blocked | failed | error
    message: str = ""
    layer: str | None = None


def applies(requirement: str, allocation: str | None) -> bool:
    """Whether a check marked for `requirement` evidences it in a run with this allocation."""
    wanted = ONLY_WITH_ALLOCATION.get(requirement)
    return wanted is None or wanted == allocation


def fold(checks: list[Check], new: Check) -> None:
    """Record `new`; a test's worst phase wins (setup error, call failure, teardown error)."""
    for i, old in enumerate(checks):
        if (old.requirement, old.test) == (new.requirement, new.test):
            if RANK[new.outcome] >= RANK[old.outcome]:
                checks[i] = new
            return
    checks.append(new)


def status(checks: Iterable[Check]) -> str:
    """passed (every assessed check passed), failed (one failed, errored or was blocked by a failed layer),
    or not-assessed (every check skipped, or none ran)."""
    outcomes = [c.outcome for c in checks]
    if any(o in ("failed", "error", "blocked") for o in outcomes):
        return "failed"
    if any(o == "passed" for o in outcomes):
        return "passed"
    return "not-assessed"


def section(checks: list[Check]) -> dict[str, Any]:
    """report.json's `ai_conformance`: every requirement the suite knows, its status and its checks."""
    requirements = []
    for req in REQUIREMENTS:
        mine = [c for c in checks if c.requirement == req.id]
        requirements.append(
            {
                "id": req.id,
                "category": req.category,
                "title": req.title,
                "how": req.how,
                "status": status(mine),
                "checks": [
                    {"test": c.test, "layer": c.layer, "outcome": c.outcome, "message": c.message[:500]}
                    for c in mine
                ],
            }
        )
    return {"version": VERSION, "requirements": requirements}


def fragment(checks: list[Check], run: Mapping[str, Any]) -> dict[str, Any]:
    """The submission fragment: only requirements this run assessed, with the suite's evidence.

    `run` gives the run's identity for the evidence lines (run_id, cluster, started_at, report)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for req in REQUIREMENTS:
        mine = [c for c in checks if c.requirement == req.id]
        verdict = status(mine)
        if verdict == "not-assessed":
            continue
        evidence = [
            f"k8s-gpu-acceptance run {run.get('run_id')} on {run.get('cluster')} ({run.get('started_at')}): "
            f"{c.test} {c.outcome}"
            for c in mine
            if c.outcome != "skipped"
        ]
        if run.get("report"):
            evidence.append(str(run["report"]))
        failed = [c for c in mine if c.outcome in ("failed", "error", "blocked")]
        notes = (
            f"{req.how}. Verdict of this run: passed."
            if verdict == "passed"
            else f"{req.how}. Verdict of this run: failed: " + "; ".join(c.message[:300] for c in failed)
        )
        skipped = [c for c in mine if c.outcome == "skipped"]
        if skipped:
            notes += " Not assessed in this run: " + "; ".join(
                f"{c.test} ({c.message[:200]})" for c in skipped
            )
        out.setdefault(req.category, []).append(
            {
                "id": req.id,
                "status": "Implemented" if verdict == "passed" else "Not Implemented",
                "evidence": evidence,
                "notes": notes,
            }
        )
    return {
        "metadata": {"kubernetesAIConformanceVersion": VERSION, "generatedBy": "k8s-gpu-acceptance"},
        "spec": out,
    }


def write_fragment(path: Path, document: Mapping[str, Any]) -> Path:
    """JSON for a .json name, YAML otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(dict(document), sort_keys=False, width=110), encoding="utf-8")
    return path


def section_html(data: Mapping[str, Any]) -> str:
    """The HTML report's conformance section: requirement, status, the checks that evidence it."""
    e = html.escape
    rows = []
    for req in data["requirements"]:
        checks = "<br>".join(
            f'{e(c["test"])}: <span class="o-{e(c["outcome"])}">{e(c["outcome"])}</span>'
            for c in req["checks"]
        )
        rows.append(
            f'<tr data-requirement="{e(req["id"])}"><td><code>{e(req["id"])}</code><br>{e(req["title"])}</td>'
            f'<td><span class="o-{e(req["status"])}">{e(req["status"])}</span></td>'
            f"<td>{checks or 'no check ran'}</td><td>{e(req['how'])}</td></tr>"
        )
    return (
        '<div class="gpu-acc gpu-acc-conformance">'
        f"<h2>CNCF Kubernetes AI Conformance {e(data['version'])}: requirements this run evidences</h2>"
        "<table><tr><th>Requirement</th><th>Status</th><th>Checks</th><th>How the suite checks it</th></tr>"
        f'{"".join(rows)}</table><p class="note">not-assessed: no check of this run bore on it (skipped or '
        "not selected); such requirements are left out of --conformance-out.</p></div>"
    )
