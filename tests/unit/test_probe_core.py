"""The probe's engine and command line: time bounds, exceptions, skips, exit codes, stdout purity."""

from __future__ import annotations

import threading
import time

import pytest
from gpu_probe import __main__ as cli
from gpu_probe.core import Context, LayerResult, Options, run_layer, run_probe
from gpu_probe.document import EXIT_LAYER_FAILED, EXIT_OK, EXIT_USAGE, LAYER_NAMES, parse_document
from gpu_probe.layers.gpt2 import DEFAULT_HUB_MODEL, DEFAULT_LOCAL_MODEL, load_error_diagnosis, resolve_model
from gpu_probe.specs import lookup_spec, ratio


def ctx() -> Context:
    return Context(options=Options(), env={}, in_kubernetes=False)


def passing(_ctx: Context, result: LayerResult) -> None:
    result.metrics["x"] = 1
    result.set("pass")


def test_exception_becomes_the_layers_error() -> None:
    def broken(_ctx: Context, result: LayerResult) -> None:
        result.metrics["partial"] = True
        raise KeyError("boom")

    result = run_layer("driver", broken, ctx(), 5)
    assert result.status == "error"
    assert result.error == "the probe's driver layer raised KeyError: 'boom'"
    assert result.metrics == {"partial": True}
    assert "KeyError" in result.evidence["traceback"]


def test_a_hanging_layer_is_abandoned() -> None:
    release = threading.Event()

    def hangs(_ctx: Context, result: LayerResult) -> None:
        result.metrics["started"] = True
        release.wait(10)

    start = time.perf_counter()
    result = run_layer("nvidia_smi", hangs, ctx(), 0.2)
    release.set()
    assert time.perf_counter() - start < 2
    assert result.status == "error"
    assert result.error == "the nvidia_smi layer did not finish within 0 s and was abandoned"
    assert result.metrics == {"started": True}


def test_all_layers_pass_gives_exit_0_and_a_valid_document() -> None:
    doc = run_probe(Options(), dict.fromkeys(LAYER_NAMES, passing), ["--json"])
    assert doc["exit_code"] == EXIT_OK
    assert parse_document(cli.render_document(doc)) == doc


def test_unrequested_layers_are_skipped_and_do_not_count() -> None:
    def fails(_ctx: Context, result: LayerResult) -> None:
        result.set("fail", "no driver")

    funcs = dict.fromkeys(LAYER_NAMES, passing)
    funcs["gpt2"] = fails
    doc = run_probe(Options(layers=("driver",)), funcs, [])
    assert doc["exit_code"] == EXIT_OK
    assert doc["layers"]["gpt2"]["status"] == "skipped"
    assert doc["layers"]["gpt2"]["error"] == "not requested (--layers)"
    doc = run_probe(Options(), funcs, [])
    assert doc["exit_code"] == EXIT_LAYER_FAILED


def test_prefetch_runs_before_timed_layers() -> None:
    order: list[str] = []

    def prefetch() -> None:
        time.sleep(0.1)
        order.append("prefetch")

    def record(name: str):
        def func(_ctx: Context, result: LayerResult) -> None:
            order.append(name)
            result.set("pass")

        return func

    funcs = {name: record(name) for name in LAYER_NAMES}
    run_probe(Options(), funcs, [], prefetch=prefetch)
    assert order.index("prefetch") < order.index("gpu_perf")


def test_prefetch_failure_is_left_to_the_layer() -> None:
    def prefetch() -> None:
        raise ImportError("No module named 'transformers'")

    doc = run_probe(Options(), dict.fromkeys(LAYER_NAMES, passing), [], prefetch=prefetch)
    assert doc["exit_code"] == EXIT_OK


@pytest.mark.parametrize(
    "argv", [["--layers", "driver,bogus"], ["--layers", ""], ["--new-tokens", "0"], ["--no-such-flag"]]
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == EXIT_USAGE
    assert capsys.readouterr().out == ""


def test_version_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert "gpu-probe 0.1.0" in capsys.readouterr().out


def test_json_stdout_holds_only_the_document(capfd: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--json", "--layers", "driver,nvidia_smi"])
    out, err = capfd.readouterr()
    doc = parse_document(out)
    assert out.startswith('{\n  "schema_version"')
    assert code == doc["exit_code"]
    assert "gpu-probe: measuring driver" in err


def test_summary_table_lists_every_layer(capfd: pytest.CaptureFixture[str]) -> None:
    cli.main(["--layers", "driver"])
    out, _err = capfd.readouterr()
    for name in LAYER_NAMES:
        assert f"\n{name} " in out


def test_resolve_model() -> None:
    assert resolve_model(None, exists=lambda p: p == DEFAULT_LOCAL_MODEL) == (
        DEFAULT_LOCAL_MODEL,
        "local-path",
    )
    assert resolve_model(None, exists=lambda p: False) == (DEFAULT_HUB_MODEL, "hub")
    assert resolve_model("tiny-random-gpt2") == ("tiny-random-gpt2", "built-in-tiny-random")
    assert resolve_model("random-gpt2-small") == ("random-gpt2-small", "built-in-random-small")
    assert resolve_model("./weights", exists=lambda p: False) == ("./weights", "local-path")
    assert resolve_model("openai-community/gpt2", exists=lambda p: False) == ("openai-community/gpt2", "hub")


def test_hub_load_error_names_cause_and_ways_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    error, diag = load_error_diagnosis("openai-community/gpt2", "hub", OSError("We couldn't connect"))
    assert "HF_HUB_OFFLINE=1" in error
    assert "We couldn't connect" in error
    assert "--model tiny-random-gpt2" in diag["fix"]
    assert "/models/gpt2" in diag["fix"]


@pytest.mark.parametrize(
    ("name", "label", "tflops", "bandwidth"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM5 80GB HBM3", 989.0, 3350.0),
        ("NVIDIA H100 PCIe", "H100 PCIe 80GB", 756.0, 2000.0),
        ("NVIDIA H100 NVL", "H100 NVL 94GB", 835.0, 3900.0),
        ("NVIDIA H200", "H200 SXM 141GB", 989.0, 4800.0),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM4 80GB", 312.0, 2039.0),
        ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB", 312.0, 1935.0),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB", 312.0, 1555.0),
        ("NVIDIA L4", "L4", 121.0, 300.0),
        ("NVIDIA L40S", "L40S", 362.0, 864.0),
        ("NVIDIA A10G", "A10G", None, 600.0),
        ("Tesla T4", "T4", None, 320.0),
    ],
)
def test_spec_table(name: str, label: str, tflops: float | None, bandwidth: float) -> None:
    assert lookup_spec(name) == {"label": label, "bf16_tflops": tflops, "memory_bandwidth_gbps": bandwidth}


def test_unknown_gpu_has_no_ratio() -> None:
    assert lookup_spec("NVIDIA GeForce RTX 4090") is None
    assert lookup_spec(None) is None
    assert ratio(785.1, None) is None
    assert ratio(785.1, 989.0) == 0.794
