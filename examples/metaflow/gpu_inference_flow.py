"""The users' Metaflow GPU flow: start -> check_gpu -> run_inference -> end, results to S3 (MinIO).

check_gpu runs the suite's own probe (driver, nvidia-smi, torch.cuda layers) and run_inference its GPT-2
measurement (prompt "Explain what an LLM is"), each as `python -m gpu_probe --json` so the step reads the
same versioned document a probe pod prints. `end` writes one summary JSON to --results-url (default
s3://metaflow/gpu-inference-demo/gpu_inference_results.json) through Metaflow's own S3 client, so the
datastore's endpoint (METAFLOW_S3_ENDPOINT_URL) and credentials apply.

The two GPU steps declare `@resources(gpu=1)`: a `run --with kubernetes` and a flow compiled for Argo
Workflows (`argo-workflows create`, which runs every step on Kubernetes) give them `nvidia.com/gpu: 1`; the
tolerations for tainted GPU nodes come from METAFLOW_KUBERNETES_TOLERATIONS. Not `@kubernetes(gpu=1)` in
the code: that decorator sends even a plain local `run` to the cluster (a first version did: its Job sat
Pending on the testbed), while a local `run` should execute every step in this process's environment.
On a machine without a GPU pass `--require-gpu false`: check_gpu then records the probe's verdicts (the
driver layer fails for its real reason) and run_inference measures on the CPU, said in the summary
(`cpu_fallback`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from metaflow import (  # type: ignore[attr-defined]  # `resources` is made at import time from its plugins
    S3,
    FlowSpec,
    Parameter,
    current,
    resources,
    step,
)

CHECK_LAYERS = "driver,nvidia_smi,torch_cuda"
# The probe's package: installed in the image, or the checkout's container/ folder next to examples/.
PROBE_PATH = os.environ.get(
    "GPU_PROBE_PATH", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "container")
)


def probe(*args: str, timeout: float = 900.0) -> dict[str, Any]:
    """Run the probe once and return its document (exit code 1 = a layer failed: still a document)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (PROBE_PATH, os.environ.get("PYTHONPATH")) if p),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "gpu_probe", "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"gpu_probe exited {proc.returncode}: {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout))


def verdicts(document: dict[str, Any]) -> dict[str, str]:
    """Layer name -> pass/fail/skipped/error, as the probe measured them."""
    return {
        name: layer["status"] for name, layer in document["layers"].items() if layer["status"] != "skipped"
    }


class GpuInferenceFlow(FlowSpec):
    """A GPU check and a GPT-2 generation on the GPU, with the results in S3."""

    model = Parameter("model", default="tiny-random-gpt2", help="hub id, local path or a built-in model")
    prompt = Parameter("prompt", default="Explain what an LLM is")
    new_tokens = Parameter("new-tokens", default=32, type=int)
    results_url = Parameter(
        "results-url", default="s3://metaflow/gpu-inference-demo/gpu_inference_results.json"
    )
    require_gpu = Parameter("require-gpu", default=True, type=bool, help="fail check_gpu without a GPU")

    @step
    def start(self) -> None:
        self.next(self.check_gpu)

    @resources(gpu=1)
    @step
    def check_gpu(self) -> None:
        document = probe("--layers", CHECK_LAYERS)
        self.gpu_check = verdicts(document)
        torch_cuda = document["layers"]["torch_cuda"]["metrics"]
        self.gpu_devices = torch_cuda.get("devices") or []
        self.gpu_node = document["identity"].get("node_name") or document["identity"].get("hostname")
        if self.require_gpu and document["exit_code"] != 0:
            failed = {k: v for k, v in self.gpu_check.items() if v != "pass"}
            raise RuntimeError(f"check_gpu: the probe found no usable GPU: {failed}")
        self.next(self.run_inference)

    @resources(gpu=1)
    @step
    def run_inference(self) -> None:
        args = (
            "--model",
            str(self.model),
            "--prompt",
            str(self.prompt),
            "--new-tokens",
            str(self.new_tokens),
        )
        document = probe("--layers", "gpt2", *args)
        gpt2 = document["layers"]["gpt2"]
        if gpt2["status"] != "pass":
            raise RuntimeError(f"run_inference: {gpt2.get('error')}")
        self.inference = {
            k: gpt2["metrics"].get(k)
            for k in (
                "model",
                "device",
                "cpu_fallback",
                "generated_text",
                "new_tokens",
                "ttft_ms",
                "token_latency_ms_p50",
                "token_latency_ms_p95",
                "tokens_per_s",
            )
        }
        self.next(self.end)

    @step
    def end(self) -> None:
        summary = {
            "flow": current.flow_name,
            "run_id": current.run_id,
            "prompt": self.prompt,
            "model": self.model,
            "gpu_check": self.gpu_check,
            "gpu_devices": self.gpu_devices,
            "gpu_node": self.gpu_node,
            "inference": self.inference,
        }
        with S3() as s3:
            s3.put(self.results_url, json.dumps(summary, indent=2))
        print(f"results: {self.results_url}")


if __name__ == "__main__":
    GpuInferenceFlow()
