"""The committed recordings say what issue 3's 'done when' asks, and garbled.log takes the error path."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from gpu_probe.document import LAYER_NAMES, ProbeOutputError, parse_document

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"


def load(name: str) -> dict[str, Any]:
    return parse_document((RECORDINGS / f"{name}.log").read_text(encoding="utf-8"))


def test_h100_every_layer_passes_with_real_figures() -> None:
    doc = load("h100")
    assert doc["exit_code"] == 0
    assert all(doc["layers"][name]["status"] == "pass" for name in LAYER_NAMES)
    driver = doc["layers"]["driver"]["metrics"]
    assert driver["driver_version"].startswith("580.")
    assert driver["gpu_count"] == 1
    assert driver["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    torch_cuda = doc["layers"]["torch_cuda"]["metrics"]
    assert torch_cuda["cuda_available"] is True
    assert torch_cuda["matmul_ok"] is True
    assert torch_cuda["matmul_max_abs_err"] <= torch_cuda["matmul_tolerance"]
    assert torch_cuda["runtime_newer_than_driver"] is False
    perf = doc["layers"]["gpu_perf"]["metrics"]
    assert 500 < perf["bf16_tflops"] < 989
    assert 0.5 < perf["tflops_ratio"] < 1
    assert 0.5 < perf["bandwidth_ratio"] < 1
    gpt2 = doc["layers"]["gpt2"]["metrics"]
    assert gpt2["device"] == "cuda:0"
    assert gpt2["cpu_fallback"] is False
    assert gpt2["token_latency_ms_p50"] <= gpt2["token_latency_ms_p95"]
    assert gpt2["tokens_per_s"] > 50
    assert doc["duration_s"] < 15


def test_h100_nvidia_smi_evidence_is_the_raw_output() -> None:
    smi = load("h100")["layers"]["nvidia_smi"]
    assert "NVIDIA-SMI 580" in smi["evidence"]["table"]
    assert smi["evidence"]["csv"].startswith("index, name, uuid")
    assert smi["metrics"]["gpus"][0]["memory_total_mib"] == 81559


def test_cpu_recording_fails_lower_layers_and_flags_cpu_fallback() -> None:
    doc = load("cpu")
    assert doc["exit_code"] == 1
    for name in ("driver", "nvidia_smi", "torch_cuda"):
        assert doc["layers"][name]["status"] == "fail"
        assert doc["layers"][name]["diagnosis"]["cause"]
    gpt2 = doc["layers"]["gpt2"]
    assert gpt2["status"] == "pass"
    assert gpt2["metrics"]["device"] == "cpu"
    assert gpt2["metrics"]["cpu_fallback"] is True


def test_recordings_hold_nothing_but_allow_listed_env() -> None:
    for name in ("h100", "cpu"):
        env = load(name)["env"]
        assert all(key.startswith(("NVIDIA_", "CUDA_")) for key in env)


def test_garbled_log_is_a_clear_error() -> None:
    with pytest.raises(ProbeOutputError, match=r"truncated"):
        load("garbled")


def test_garbled_log_is_what_the_script_makes() -> None:
    spec = importlib.util.spec_from_file_location("make_garbled", RECORDINGS / "make_garbled.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    h100 = (RECORDINGS / "h100.log").read_text(encoding="utf-8")
    assert module.garble(h100) == (RECORDINGS / "garbled.log").read_text(encoding="utf-8")


def test_h100_cluster_recording_was_measured_by_the_pod_itself() -> None:
    # The probe pod of the all-layers run on the real single-node H100 cluster (issue 10): CDI gave it the
    # GPU (NVIDIA_VISIBLE_DEVICES=void: the plugin's cdi-cri strategy), the host's nvidia-smi and libcuda.
    doc = load("h100-cluster")
    assert doc["exit_code"] == 0
    assert all(doc["layers"][name]["status"] == "pass" for name in LAYER_NAMES)
    identity = doc["identity"]
    assert identity["in_kubernetes"] is True and identity["node_name"] == "vm"
    assert identity["pod_name"] == identity["hostname"] and identity["pod_name"].startswith("gpu-probe-")
    assert identity["user_uid"] == 10001
    assert doc["env"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "/dev/nvidia0" in doc["layers"]["driver"]["metrics"]["device_nodes"]
    assert doc["layers"]["nvidia_smi"]["metrics"]["path"] == "/usr/local/nvidia/bin/nvidia-smi"
    assert doc["layers"]["gpt2"]["metrics"]["device"] == "cuda:0"
    assert 0.5 < doc["layers"]["gpu_perf"]["metrics"]["tflops_ratio"] < 1
