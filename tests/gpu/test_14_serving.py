"""Serving: the GPT-2 service (examples/inference/server.py) as a Deployment + Service, under load, then
scaled one replica past the node's free GPUs.

Opt-in: marker `serving` only (not `gpu`), so `pytest -m gpu` does not deploy a service and load it for a
minute; run it with `pytest -m serving` (or `-m "gpu or serving"`). Not a layer of the chain: its outcome
counts in the run's verdict like the scenario checks'. The requests go through the API server's service
proxy (k8s_gpu_acceptance/serving.py says what a latency includes).
"""

import pytest

from k8s_gpu_acceptance.checks import fail
from k8s_gpu_acceptance.diagnosis import (
    diagnose_serving_load,
    diagnose_serving_not_ready,
    diagnose_serving_scaling,
    scheduler_reasons,
)
from k8s_gpu_acceptance.loadtest import percentile
from k8s_gpu_acceptance.serving import MAX_EXTRA_REPLICAS, load_problems, serving_image

pytestmark = [pytest.mark.serving]


def _where(run):
    return f"Deployment {run.session.namespace}/{run.session.deployment} on {run.node}"


def test_service_answers_under_load(request, serving_service, record_scenario, gpu_settings):
    run = serving_service
    if run.failure is not None:
        f = run.failure
        fail(diagnose_serving_not_ready(_where(run), f.kind, f.reason, f.message))
    session = run.session
    round_trip = session.proxy_round_trip_ms()
    levels, rows = session.sweep(
        list(gpu_settings.serving_levels),
        gpu_settings.serving_requests_per_client,
        gpu_settings.serving_new_tokens,
    )
    proxy_p50 = percentile(round_trip, 50)
    record_scenario(
        "serving",
        {
            "node": run.node,
            "deployment": f"{session.namespace}/{session.deployment}",
            "image": serving_image(gpu_settings),
            "model": gpu_settings.model,
            "ready_after_s": run.ready_after_s,
            "path": "API server service proxy",
            "proxy_round_trip_ms_p50": round(proxy_p50, 2) if proxy_p50 is not None else None,
            "new_tokens": gpu_settings.serving_new_tokens,
            "requests_per_client": gpu_settings.serving_requests_per_client,
            "levels": rows,
            "budgets": {
                "max_p50_ms": gpu_settings.serving_max_p50_ms,
                "max_error_rate": gpu_settings.serving_max_error_rate,
            },
        },
    )
    summary = ", ".join(
        f"{r['concurrency']} client(s): p50 {r['p50_ms']} ms, {r['requests_per_s']} req/s" for r in rows
    )
    request.node.user_properties.append(("serving.summary", summary))
    problems = load_problems(levels, gpu_settings.serving_max_p50_ms, gpu_settings.serving_max_error_rate)
    if problems:
        fail(diagnose_serving_load(_where(run), problems))
    print(f"serving: {summary}")


def test_one_replica_more_than_the_free_gpus_stays_pending(
    request, serving_service, record_scenario, gpu_settings
):
    run = serving_service
    if run.failure is not None:
        pytest.skip(f"serving: the service never became ready ({run.failure.reason}), so it was not scaled")
    session = run.session
    free = run.allocatable - session.used_gpus(run.node)  # our Ready replica holds one already
    if free > MAX_EXTRA_REPLICAS:
        pytest.skip(f"serving: {run.node} has {free} free GPUs, more than the bound {MAX_EXTRA_REPLICAS}")
    replicas = 1 + max(free, 0) + 1
    scaled = session.scale(replicas)
    pending = list(scaled.pending.values())
    entry = {
        "node": run.node,
        "allocatable": run.allocatable,
        "free_gpus_besides_the_first_replica": free,
        "replicas": replicas,
        "bound": len(scaled.bound),
        "pending": len(scaled.pending),
    }
    if len(scaled.pending) == 1:
        pod, message = next(iter(scaled.pending.items()))
        fmt = {"gpus": 1, "taint": "", "toleration": "", "selector": {"kubernetes.io/hostname": run.node}}
        reasons = {rule: (cause, fix) for rule, cause, fix in scheduler_reasons(message, fmt)}
        cause, fix = reasons.get("insufficient-gpu", ("", ""))
        entry["pending_replica"] = {
            "pod": pod,
            "scheduler": message,
            "rule": "insufficient-gpu" if "insufficient-gpu" in reasons else "+".join(reasons),
            "cause": cause,
            "fix": fix,
        }
    if scaled.undecided:
        entry["undecided"] = scaled.undecided
    record_scenario("serving.scaling", entry)
    request.node.user_properties.append(
        (
            "serving.pending_reason",
            entry.get("pending_replica", {}).get("scheduler", f"{len(scaled.pending)} Pending"),
        )
    )
    problem = diagnose_serving_scaling(run.node, replicas, len(scaled.bound), pending, len(scaled.undecided))
    if problem is not None:
        fail(problem)
    print(f"serving: scaled to {replicas} on {run.node}: one Pending: {pending[0]}")
