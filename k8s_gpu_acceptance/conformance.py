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
from collections import Counter
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
    node: str | None = None  # in a fleet sweep, the node the test is about


@dataclass(frozen=True)
class Evidence:
    """One line of evidence: a test, or in a fleet sweep one test across its nodes (a 1000-node sweep would
    otherwise list 1000 lines per requirement)."""

    test: str
    outcome: str  # the worst of its checks
    summary: str  # e.g. "passed", "passed on 1000 nodes", "failed on 2 of 1000 nodes (gpu-node-8, ...)"
    messages: tuple[str, ...] = ()  # the failed checks' messages, each with its node


def evidence(checks: Iterable[Check]) -> list[Evidence]:
    """The checks as evidence lines, in order of first appearance; a sweep's per-node checks of one test
    become one line that counts the nodes per outcome and names the nodes that did not pass (first 5)."""
    groups: dict[str, list[Check]] = {}
    for check in checks:
        key = check.test.rsplit("[", 1)[0] if check.node is not None else check.test
        groups.setdefault(key, []).append(check)
    lines = []
    for test, mine in groups.items():
        worst = max((c.outcome for c in mine), key=lambda o: RANK[o])
        failed = [c for c in mine if c.outcome in ("failed", "error", "blocked")]
        messages = tuple(f"{c.node}: {c.message}" if c.node else c.message for c in failed)
        if all(c.node is None for c in mine):
            lines.append(Evidence(test, worst, worst, messages))
            continue
        counts = Counter(c.outcome for c in mine)
        parts = []
        for outcome, n in sorted(counts.items(), key=lambda kv: -RANK[kv[0]]):
            names = [str(c.node) for c in mine if c.outcome == outcome]
            named = (
                f" ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if outcome != "passed" else ""
            )
            of = f" of {len(mine)}" if n != len(mine) else ""
            parts.append(f"{outcome} on {n}{of} node{'s' if len(mine) != 1 else ''}{named}")
        lines.append(Evidence(test, worst, "; ".join(parts), messages))
    return lines


def applies(requirement: str, allocation: str | None) -> bool:
    """Whether a check marked for `requirement` evidences it in a run with this allocation."""
    wanted = ONLY_WITH_ALLOCATION.get(requirement)
    return wanted is None or wanted == allocation


def fold(checks: dict[tuple[str, str], Check], new: Check) -> None:
    """Record `new` under (requirement, test); a test's worst phase wins (setup error, call failure,
    teardown error). Keyed, so a 1000-node sweep's 6000 checks cost no scan each."""
    old = checks.get((new.requirement, new.test))
    if old is None or RANK[new.outcome] >= RANK[old.outcome]:
        checks[(new.requirement, new.test)] = new


def status(checks: Iterable[Check]) -> str:
    """passed (every assessed check passed), failed (one failed, errored or was blocked by a failed layer),
    or not-assessed (every check skipped, or none ran)."""
    outcomes = [c.outcome for c in checks]
    if any(o in ("failed", "error", "blocked") for o in outcomes):
        return "failed"
    if any(o == "passed" for o in outcomes):
        return "passed"
    return "not-assessed"


def section(checks: Iterable[Check]) -> dict[str, Any]:
    """report.json's `ai_conformance`: every requirement the suite knows, its status and its checks."""
    requirements = []
    checks = list(checks)
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
                    {
                        "test": c.test,
                        "layer": c.layer,
                        "outcome": c.outcome,
                        "message": c.message[:500],
                        **({"node": c.node} if c.node else {}),
                    }
                    for c in mine
                ],
            }
        )
    return {"version": VERSION, "requirements": requirements}


def fragment(checks: Iterable[Check], run: Mapping[str, Any]) -> dict[str, Any]:
    """The submission fragment: only requirements this run assessed, with the suite's evidence.

    `run` gives the run's identity for the evidence lines (run_id, cluster, started_at, report)."""
    out: dict[str, list[dict[str, Any]]] = {}
    checks = list(checks)
    for req in REQUIREMENTS:
        mine = [c for c in checks if c.requirement == req.id]
        verdict = status(mine)
        if verdict == "not-assessed":
            continue
        lines = evidence(mine)
        found = [
            f"k8s-gpu-acceptance run {run.get('run_id')} on {run.get('cluster')} ({run.get('started_at')}): "
            f"{line.test} {line.summary}"
            for line in lines
            if line.outcome != "skipped"
        ]
        if run.get("report"):
            found.append(str(run["report"]))
        failed = [m[:300] for line in lines for m in line.messages]
        notes = (
            f"{req.how}. Verdict of this run: passed."
            if verdict == "passed"
            else f"{req.how}. Verdict of this run: failed: "
            + "; ".join(failed[:5])
            + (f"; and {len(failed) - 5} more" if len(failed) > 5 else "")
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
                "evidence": found,
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
        lines = evidence(
            Check(req["id"], c["test"], c["outcome"], c.get("message", ""), c.get("layer"), c.get("node"))
            for c in req["checks"]
        )
        checks = "<br>".join(
            f'{e(line.test)}: <span class="o-{e(line.outcome)}">{e(line.summary)}</span>' for line in lines
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
