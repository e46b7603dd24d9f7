"""The probe end to end as a subprocess on this CPU machine, and under a bare Python 3.8 (a stock image)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gpu_probe.document import parse_document

CONTAINER = Path(__file__).resolve().parents[2] / "container"


def run_probe(python: str, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(CONTAINER))
    for name in ("NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "KUBERNETES_SERVICE_HOST"):
        env.pop(name, None)
    proc = subprocess.run(
        [python, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_cpu_machine_end_to_end_with_tiny_random_gpt2() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if Path("/dev/nvidia0").exists():
        pytest.skip("this end-to-end test describes a CPU-only machine")
    code, out, err = run_probe(
        sys.executable,
        "-m",
        "gpu_probe",
        "--json",
        "--model",
        "tiny-random-gpt2",
        "--new-tokens",
        "8",
        "--repeats",
        "2",
    )
    doc = parse_document(out)  # validates the structure, and stdout holds nothing but the document
    assert out.lstrip().startswith("{")
    assert code == doc["exit_code"] == 1
    assert "gpu-probe: measuring gpt2" in err
    layers = doc["layers"]
    for name in ("driver", "nvidia_smi", "torch_cuda"):
        assert layers[name]["status"] == "fail", name
        assert layers[name]["error"], name
        assert layers[name]["diagnosis"]["cause"], name
    assert layers["gpu_perf"]["status"] == "skipped"
    gpt2 = layers["gpt2"]
    assert gpt2["status"] == "pass"
    metrics = gpt2["metrics"]
    assert metrics["model"] == "tiny-random-gpt2"
    assert metrics["model_source"] == "built-in-tiny-random"
    assert metrics["device"] == "cpu"
    assert metrics["cpu_fallback"] is True
    assert metrics["model_class"] == "GPT2LMHeadModel"
    assert len(metrics["token_latencies_ms"]) == 7
    assert metrics["tokens_per_s"] > 0
    assert metrics["token_latency_ms_p50"] <= metrics["token_latency_ms_p95"]
    assert metrics["generated_text"]
    assert "ran on the CPU" in gpt2["diagnosis"]["cause"]


def _working_python38() -> str | None:
    """A Python 3.8 that really runs: pyenv's `python3.8` shim on PATH fails unless 3.8 is active."""
    candidates = [
        shutil.which("python3.8"),
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8"))),
    ]
    for candidate in filter(None, candidates):
        try:
            done = subprocess.run(
                [candidate, "-S", "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and done.stdout.strip() == "(3, 8)":
            return candidate
    return None


PYTHON38 = _working_python38()


@pytest.mark.skipif(PYTHON38 is None, reason="no working Python 3.8 here")
def test_lower_layers_on_a_bare_python38() -> None:
    # -S: no site-packages at all, as in a stock image with the probe mounted from a ConfigMap.
    python38 = PYTHON38
    assert python38 is not None
    code, out, _err = run_probe(python38, "-S", "-m", "gpu_probe", "--json", timeout=60)
    doc = parse_document(out)
    assert code == doc["exit_code"]
    assert doc["identity"]["python"].startswith("3.8.")
    for name in ("torch_cuda", "gpt2"):
        assert doc["layers"][name]["status"] == "error"
        assert "torch is not installed in this image" in doc["layers"][name]["error"]
    assert doc["layers"]["driver"]["status"] in ("pass", "fail")
    assert doc["layers"]["driver"]["metrics"]["nvml_available"] is False
