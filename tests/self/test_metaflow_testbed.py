"""The users' Metaflow GPU flow (examples/metaflow) with a real Metaflow S3 datastore on the testbed's MinIO.

A local `run` on this CPU machine (`--require-gpu false`, the built-in tiny model): every step runs, the
summary JSON lands at s3://metaflow/gpu-inference-demo/gpu_inference_results.json with the probe's verdicts
and the GPT-2 figures. `argo-workflows create --only-json` compiles the flow for Argo: its GPU steps must ask
for nvidia.com/gpu, tolerate tainted GPU nodes and run the image given. (Run through an Argo controller
on the real node: tests/self/test_argo_testbed.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3

REPO = Path(__file__).resolve().parents[2]
FLOW = REPO / "examples" / "metaflow" / "gpu_inference_flow.py"
RESULTS_KEY = "gpu-inference-demo/gpu_inference_results.json"  # removed by conftest's metaflow_env
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
S3_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def minio(env: dict[str, str]) -> Any:
    """A client of the testbed's MinIO with its credentials passed explicitly."""
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def _flow(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(FLOW), "--no-pylint", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_flow_runs_and_writes_its_summary_to_minio(metaflow_env, tmp_path):
    proc = _flow(metaflow_env, tmp_path, "run", "--require-gpu", "false", "--model", "tiny-random-gpt2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(minio(metaflow_env).get_object(Bucket="metaflow", Key=RESULTS_KEY)["Body"].read())
    assert summary["flow"] == "GpuInferenceFlow"
    assert summary["run_id"] in proc.stdout + proc.stderr
    assert summary["prompt"] == "Explain what an LLM is"
    # This machine has no GPU: the probe said so for its real reason, and the flow went on as asked.
    assert set(summary["gpu_check"]) == {"driver", "nvidia_smi", "torch_cuda"}
    assert summary["gpu_check"]["driver"] == "fail"
    inference = summary["inference"]
    assert inference["model"] == "tiny-random-gpt2" and inference["new_tokens"] == 32
    assert inference["device"] == "cpu" and inference["cpu_fallback"] is True
    assert inference["tokens_per_s"] > 0 and inference["token_latency_ms_p50"] > 0
    assert inference["generated_text"]
    assert metaflow_env["AWS_SECRET_ACCESS_KEY"] not in proc.stdout + proc.stderr


def test_without_a_gpu_check_gpu_fails_by_default(metaflow_env, tmp_path):
    proc = _flow(metaflow_env, tmp_path, "run", "--model", "tiny-random-gpt2")
    assert proc.returncode != 0
    assert "check_gpu: the probe found no usable GPU" in proc.stdout + proc.stderr


def test_the_argo_workflow_asks_for_a_gpu_tolerates_gpu_nodes_and_runs_the_image(metaflow_env, tmp_path):
    env = {
        **metaflow_env,
        "METAFLOW_KUBERNETES_CONTAINER_IMAGE": "k8s-gpu-acceptance.local/gpu-probe:flow",
        "METAFLOW_KUBERNETES_TOLERATIONS": json.dumps([GPU_TOLERATION]),
        "METAFLOW_KUBERNETES_NAMESPACE": "default",
    }
    proc = _flow(env, tmp_path, "argo-workflows", "create", "--only-json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    template = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert template["kind"] == "WorkflowTemplate"
    steps = {t["name"]: t for t in template["spec"]["templates"] if "container" in t}
    for name in ("check-gpu", "run-inference"):
        assert steps[name]["container"]["resources"]["limits"]["nvidia.com/gpu"] == "1", name
        assert GPU_TOLERATION in steps[name]["tolerations"], name
        assert steps[name]["container"]["image"] == "k8s-gpu-acceptance.local/gpu-probe:flow"
    assert "nvidia.com/gpu" not in (steps["start"]["container"].get("resources") or {}).get("limits", {})
    assert metaflow_env["AWS_SECRET_ACCESS_KEY"] not in proc.stdout
