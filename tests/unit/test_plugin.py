"""The plugin's hooks, run in-process with pytester (no cluster, no testbed), grouped by concern as
pytest-xdist's acceptance tests are: ordering, blocking, the worst-phase merge, the fixture chain, the reports
on and off, and the option checks that end a run before it starts.

The probe is replaced where a test needs one by a `probe_run` override that reads a real recording
(tests/data/recordings) on `--target local`: the layer tests of tests/gpu then run unchanged against it.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
RECORDINGS = REPO / "tests" / "data" / "recordings"
LAYER_TESTS = ("test_4_driver", "test_5_nvidia_smi", "test_6_torch_cuda", "test_7_gpt2", "test_8_gpu_perf")

RECORDING_CONFTEST = """
import pytest
from pathlib import Path
from k8s_gpu_acceptance.probe import ProbeRun, read_document


@pytest.fixture(scope="session")
def probe_run(run_state):
    where = "the {name} recording"
    raw = Path({path!r}).read_text(encoding="utf-8")
    document, error = read_document(raw, where)
    run_state.probe = ProbeRun("local", document, raw, error, where, 0.1)
    return run_state.probe
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A throwaway project in which the installed plugin is active, with no GPU_ACCEPTANCE_* variable."""
    monkeypatch.setenv("KUBECONFIG", "/nonexistent")
    for name in [n for n in os.environ if n.startswith("GPU_ACCEPTANCE_")]:
        monkeypatch.delenv(name)
    return pytester


def with_recording(
    pytester: pytest.Pytester, name: str, extra_conftest: str = "", path: Path | None = None
) -> None:
    """The layer tests of tests/gpu, with `probe_run` reading a recording (or a log at `path` derived from
    one) instead of running the probe."""
    conftest = RECORDING_CONFTEST.format(name=name, path=str(path or RECORDINGS / f"{name}.log"))
    pytester.makeconftest(conftest + textwrap.dedent(extra_conftest))
    for module in LAYER_TESTS:
        pytester.makepyfile(**{module: (REPO / "tests" / "gpu" / f"{module}.py").read_text(encoding="utf-8")})


def report_json(pytester: pytest.Pytester, report_dir: str = "out") -> dict:
    return json.loads((pytester.path / report_dir / "report.json").read_text(encoding="utf-8"))


def outcomes(report: dict) -> dict[str, tuple[str, str | None]]:
    return {entry["name"]: (entry["outcome"], entry["blocked_by"]) for entry in report["layers"]}


class TestOrdering:
    def test_layers_run_bottom_up_whatever_the_file_order(self, suite):
        names = [
            "gpu_perf",
            "gpt2",
            "torch_cuda",
            "nvidia_smi",
            "driver",
            "scheduling",
            "device_plugin",
            "cluster",
        ]
        body = "import pytest\n\ndef test_unmarked():\n    pass\n"
        body += "".join(f"\n@pytest.mark.{n}\ndef test_{n}():\n    pass\n" for n in names)
        suite.makepyfile(test_order=body)
        reprec = suite.inline_run("--target=local")
        started = [
            r.nodeid.split("::")[1]
            for r in reprec.getreports("pytest_runtest_logreport")
            if r.when == "setup"
        ]
        assert started == [f"test_{n}" for n in reversed(names)] + ["test_unmarked"]

    def test_cluster_layers_are_skipped_on_local_and_block_nothing(self, suite):
        suite.makepyfile(
            test_local="""
            import pytest

            @pytest.mark.scheduling
            def test_scheduling():
                pass

            @pytest.mark.driver
            def test_driver():
                pass
            """
        )
        result = suite.runpytest("--target=local", "-rs")
        result.assert_outcomes(passed=1, skipped=1)
        result.stdout.fnmatch_lines(["*scheduling: cluster layer, not applicable on --target local*"])


class TestBlocking:
    def test_a_failed_layer_blocks_its_dependents_with_its_cause_and_fix(self, suite):
        suite.makepyfile(
            test_chain="""
            import pytest
            from k8s_gpu_acceptance.checks import fail
            from k8s_gpu_acceptance.diagnosis import diagnose_cuda_unavailable

            @pytest.mark.driver
            def test_driver():
                pass

            @pytest.mark.nvidia_smi
            def test_nvidia_smi():
                pass

            @pytest.mark.torch_cuda
            def test_torch():
                fail(diagnose_cuda_unavailable(False, 0))

            @pytest.mark.gpt2
            def test_gpt2():
                raise AssertionError("must not run: blocked")

            @pytest.mark.gpu_perf
            def test_perf():
                raise AssertionError("must not run: blocked")
            """
        )
        result = suite.runpytest(
            "--target=local",
            "-m",
            "gpu or driver or nvidia_smi or torch_cuda or gpt2 or gpu_perf",
            "--report-dir=out",
            "-rs",
        )
        result.assert_outcomes(passed=2, failed=1, skipped=2)
        result.stdout.fnmatch_lines(
            [
                "*BLOCKED by torch_cuda: PyTorch cannot use the GPU; "
                "fix: see the probe's error in the evidence*"
            ]
        )
        report = report_json(suite)
        assert outcomes(report)["gpt2"] == ("blocked", "torch_cuda")
        assert outcomes(report)["gpu_perf"] == ("blocked", "torch_cuda")
        assert outcomes(report)["nvidia_smi"] == ("passed", None)
        torch = next(e for e in report["layers"] if e["name"] == "torch_cuda")
        assert torch["diagnosis"]["rule"] == "cuda-unavailable"

    def test_an_error_in_a_layers_setup_blocks_what_depends_on_it(self, suite):
        suite.makepyfile(
            test_setup_error="""
            import pytest

            @pytest.fixture
            def broken():
                raise RuntimeError("the probe could not start")

            @pytest.mark.driver
            def test_driver(broken):
                pass

            @pytest.mark.nvidia_smi
            def test_nvidia_smi():
                pass
            """
        )
        result = suite.runpytest("--target=local", "-m", "driver or nvidia_smi", "--report-dir=out", "-rs")
        result.assert_outcomes(errors=1, skipped=1)
        assert outcomes(report_json(suite))["driver"] == ("error", None)
        assert outcomes(report_json(suite))["nvidia_smi"] == ("blocked", "driver")

    def test_the_cpu_recording_fails_driver_and_blocks_every_layer_above(self, suite):
        with_recording(suite, "cpu")
        result = suite.runpytest("--target=local", "-m", "gpu", "--report-dir=out")
        result.assert_outcomes(failed=1, skipped=4)
        report = report_json(suite)
        assert outcomes(report)["driver"][0] == "failed"
        for name in ("nvidia_smi", "torch_cuda", "gpt2", "gpu_perf"):
            assert outcomes(report)[name] == ("blocked", "driver"), name
        assert report["outcome"] == "failed"


class TestWorstPhase:
    def test_an_error_in_teardown_turns_a_passed_layer_into_an_error(self, suite):
        suite.makepyfile(
            test_teardown="""
            import pytest

            @pytest.fixture
            def breaks_on_teardown():
                yield
                raise RuntimeError("teardown broke")

            @pytest.mark.gpt2
            def test_gpt2(breaks_on_teardown):
                pass
            """
        )
        result = suite.runpytest("--target=local", "-m", "gpt2", "--report-dir=out")
        result.assert_outcomes(passed=1, errors=1)
        gpt2 = next(e for e in report_json(suite)["layers"] if e["name"] == "gpt2")
        assert gpt2["outcome"] == "error" and "teardown broke" in gpt2["message"]

    def test_the_worst_test_of_a_layer_wins_and_metrics_of_both_are_kept(self, suite):
        suite.makepyfile(
            test_two="""
            import pytest

            @pytest.mark.gpu_perf
            def test_first(layer_evidence):
                layer_evidence.metrics["first"] = 1

            @pytest.mark.gpu_perf
            def test_second(layer_evidence):
                layer_evidence.metrics["second"] = 2
                assert False, "second broke"

            @pytest.mark.gpu_perf
            def test_third():
                pass
            """
        )
        suite.runpytest("--target=local", "-m", "gpu_perf", "--report-dir=out").assert_outcomes(
            passed=2, failed=1
        )
        perf = next(e for e in report_json(suite)["layers"] if e["name"] == "gpu_perf")
        assert perf["outcome"] == "failed" and "second broke" in perf["message"]
        assert perf["metrics"] == {"first": 1, "second": 2}


class TestMultiGpu:
    """The real 2-GPU document: a --gpus=2 probe pod on the 2 x H200 cluster (h200x2-cluster-gpus2.md)."""

    def test_the_real_two_gpu_pod_passes_every_layer_with_both_gpus_measured(self, suite):
        with_recording(suite, "h200x2-cluster-gpus2")
        suite.runpytest("--target=local", "-m", "gpu", "--report-dir=out")
        report = report_json(suite)
        probe_layers = ("driver", "nvidia_smi", "torch_cuda", "gpt2", "gpu_perf")
        assert {name: outcomes(report)[name][0] for name in probe_layers} == dict.fromkeys(
            probe_layers, "passed"
        )
        perf = next(e for e in report["layers"] if e["name"] == "gpu_perf")
        assert [g["index"] for g in perf["metrics"]["per_gpu"]] == [0, 1]

    def test_one_slow_gpu_of_a_two_gpu_pod_fails_gpu_perf_and_is_named(self, suite, tmp_path):
        # The real 2-GPU document with its second GPU made slow (SYNTHETIC: 0.3 of spec; both H200s were
        # fine).
        doc = json.loads((RECORDINGS / "h200x2-cluster-gpus2.log").read_text(encoding="utf-8"))
        second = doc["layers"]["gpu_perf"]["metrics"]["per_gpu"][1]
        second.update(bf16_tflops=297.0, tflops_ratio=0.3)
        derived = tmp_path / "two-gpus.log"
        derived.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        with_recording(suite, "two-gpus", path=derived)
        result = suite.runpytest("--target=local", "-m", "gpu_perf", "--report-dir=out")
        result.stdout.fnmatch_lines(["*gpu_perf: bf16 matmul TFLOP/s / spec (GPU 1, NVIDIA H200)*0.3*"])
        assert outcomes(report_json(suite))["gpu_perf"][0] == "failed"


class TestFixtureChain:
    OVERRIDE = """
    import dataclasses


    @pytest.fixture(scope="session")
    def gpu_settings(gpu_settings):
        return dataclasses.replace(
            gpu_settings, gpus=3, image="registry.example/probe:2", max_token_latency_ms=1.0
        )
    """

    def test_overriding_gpu_settings_reaches_the_pod_spec_and_the_thresholds(self, suite):
        with_recording(suite, "h100", self.OVERRIDE)
        suite.makepyfile(
            test_spec="""
            def test_spec(probe_pod_spec):
                container = probe_pod_spec["spec"]["containers"][0]
                assert container["resources"]["limits"]["nvidia.com/gpu"] == "3"
                assert container["image"] == "registry.example/probe:2"
            """
        )
        result = suite.runpytest("--target=local", "-m", "gpu or not gpu", "--report-dir=out")
        result.assert_outcomes(passed=5, failed=1)  # spec + 4 layers; gpt2 over the 1 ms budget
        result.stdout.fnmatch_lines(["*gpt2: p95 per-token latency 11.79 ms > limit 1 ms*"])

    def test_the_h100_recording_passes_every_probe_layer_and_the_report_reads_the_document(self, suite):
        with_recording(suite, "h100")
        result = suite.runpytest("--target=local", "-m", "gpu", "--report-dir=out")
        result.assert_outcomes(passed=5)
        report = report_json(suite)
        assert report["outcome"] == "passed"
        assert report["environment"]["gpu_model"] == "NVIDIA H100 80GB HBM3"
        assert report["environment"]["driver_version"].startswith("580.")
        assert report["environment"]["node"] == "the h100 recording"
        smi = next(e for e in report["layers"] if e["name"] == "nvidia_smi")
        assert (
            smi["metrics"]["gpu_count"] == 1 and smi["metrics"]["smi_uuids"] == smi["metrics"]["nvml_uuids"]
        )
        assert "NVIDIA-SMI 580" in smi["evidence"]["table"]


class TestReports:
    LAYER_TEST = "import pytest\n\n@pytest.mark.driver\ndef test_driver():\n    pass\n"

    def test_an_acceptance_run_writes_the_three_reports(self, suite):
        suite.makepyfile(test_a=self.LAYER_TEST)
        result = suite.runpytest("--target=local", "-m", "gpu or driver", "--report-dir=out")
        result.assert_outcomes(passed=1)
        assert sorted(p.name for p in (suite.path / "out").iterdir()) == [
            "junit.xml",
            "report.html",
            "report.json",
        ]
        result.stdout.fnmatch_lines(["gpu-acceptance: reports in out/: report.html, report.json, junit.xml"])
        page = (suite.path / "out" / "report.html").read_text()
        assert "<h2>Environment</h2>" in page
        # skipped rows folded like passed ones (the H100 run's page opened on five skip-reason boxes)
        assert "&#34;renderCollapsed&#34;: [&#34;passed&#34;, &#34;skipped&#34;]" in page

    SCENARIO_TESTS = """
        import pytest

        pytestmark = [pytest.mark.gpu, pytest.mark.sharing]

        def test_time_slicing(run_state):
            run_state.scenarios["time_slicing"] = {"node": "n1", "replicas": 2}
            run_state.scenario_findings.setdefault(
                "test_s.py::test_time_slicing", []
            ).append("time_slicing")

        def test_mps():
            pytest.skip("mps: no GPU node has nvidia.com/gpu.sharing-strategy=mps")
        """

    def test_a_run_of_scenario_checks_only_is_judged_by_them(self, suite):
        suite.makepyfile(
            test_s=self.SCENARIO_TESTS,
            test_t="import pytest\n\n@pytest.mark.distinct_gpus\ndef test_distinct():\n    pass\n",
        )
        result = suite.runpytest("--target=local", "-m", "sharing or distinct_gpus", "--report-dir=out")
        result.assert_outcomes(passed=2, skipped=1)
        report = report_json(suite)
        assert report["outcome"] == "passed"
        assert sorted((s["name"], s["group"], s["outcome"]) for s in report["scenarios"]) == [
            ("distinct", "distinct_gpus", "passed"),
            ("mps", "sharing", "skipped"),
            ("time_slicing", "sharing", "passed"),
        ]
        slicing = next(s for s in report["scenarios"] if s["name"] == "time_slicing")
        assert slicing["findings"] == {"time_slicing": {"node": "n1", "replicas": 2}}
        assert report["environment"]["node"] == "n1"

    def test_tests_under_tests_gpu_turn_the_reports_on(self, suite):
        (suite.path / "tests" / "gpu").mkdir(parents=True)
        (suite.path / "tests" / "gpu" / "test_a.py").write_text(self.LAYER_TEST)
        suite.runpytest("--target=local", "--report-dir=out", "tests/gpu").assert_outcomes(passed=1)
        assert (suite.path / "out" / "report.json").is_file()

    @pytest.mark.parametrize("markexpr", [None, "not gpu"])
    def test_other_runs_write_no_report(self, suite, markexpr):
        suite.makepyfile(test_a=self.LAYER_TEST)
        args = ["--target=local", "--report-dir=out"] + (["-m", markexpr] if markexpr else [])
        result = suite.runpytest(*args)
        assert result.ret in (0, 5)
        assert not (suite.path / "out").exists()
        assert "reports in" not in result.stdout.str()

    def test_the_header_names_the_run_and_the_target(self, suite):
        suite.makepyfile(test_a=self.LAYER_TEST)
        result = suite.runpytest("--target=local", "-m", "driver", "--report-dir=out")
        result.stdout.fnmatch_lines(
            ["gpu-acceptance: run *, target local (chosen)", "gpu-acceptance: reports -> out/"]
        )


class TestOptions:
    def test_a_mistyped_variable_ends_the_run_before_it_starts(self, suite, monkeypatch):
        suite.makepyfile(test_a="def test_a():\n    pass\n")
        monkeypatch.setenv("GPU_ACCEPTANCE_GPUZ", "2")
        result = suite.runpytest()
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(
            ["*unknown environment variable GPU_ACCEPTANCE_GPUZ; did you mean GPU_ACCEPTANCE_GPUS?*"]
        )

    def test_a_run_id_that_cannot_be_a_label_is_refused(self, suite, monkeypatch):
        monkeypatch.setenv("GPU_ACCEPTANCE_RUN_ID", "Not_A_Label")
        result = suite.runpytest()
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*GPU_ACCEPTANCE_RUN_ID='Not_A_Label': a run id is 1-40 lowercase*"])

    def test_target_k8s_without_a_kubeconfig_is_refused_before_anything_is_created(self, suite):
        suite.makepyfile(test_a=TestReports.LAYER_TEST)
        result = suite.runpytest("--target=k8s", "-m", "gpu")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*kubeconfig /nonexistent does not exist (from env KUBECONFIG)*"])

    def test_the_sigterm_handler_is_given_back_after_the_run(self, suite):
        before = signal.getsignal(signal.SIGTERM)
        suite.makepyfile(test_a="def test_a():\n    pass\n")
        suite.runpytest("--target=local").assert_outcomes(passed=1)
        assert signal.getsignal(signal.SIGTERM) is before


class TestServing:
    """The serving check is opt-in: `-m gpu` leaves it out, `-m serving` selects it; its records become
    report.json's `serving` section, a report.html table and junit properties."""

    def test_gpu_leaves_the_serving_check_out_and_serving_selects_it(self, suite):
        module = (REPO / "tests" / "gpu" / "test_14_serving.py").read_text(encoding="utf-8")
        suite.makepyfile(
            test_14_serving=module, test_a="import pytest\n\n@pytest.mark.gpu\ndef test_a():\n    pass\n"
        )
        gpu = suite.runpytest("--strict-markers", "--target=local", "--collect-only", "-q", "-m", "gpu")
        gpu.stdout.fnmatch_lines(["*1/3 tests collected (2 deselected)*"])
        serving = suite.runpytest(
            "--strict-markers", "--target=local", "--collect-only", "-q", "-m", "serving"
        )
        serving.stdout.fnmatch_lines(["*2/3 tests collected (1 deselected)*"])
        assert "test_service_answers_under_load" in serving.stdout.str()

    SERVING_TEST = """
        import pytest

        pytestmark = [pytest.mark.serving]

        def test_load(record_scenario):
            record_scenario("serving", {
                "node": "n1", "deployment": "ns/gpt2", "image": "img", "model": "tiny-random-gpt2",
                "ready_after_s": 3.0, "path": "API server service proxy", "proxy_round_trip_ms_p50": 4.0,
                "new_tokens": 8, "requests_per_client": 2,
                "budgets": {"max_p50_ms": 50.0, "max_error_rate": 0.0},
                "levels": [
                    {"concurrency": c, "requests": 2 * c, "ok": 2 * c, "wall_s": 1.0, "p50_ms": 40.0 * c,
                     "p95_ms": 45.0 * c, "p99_ms": 46.0 * c, "requests_per_s": 20.0, "tokens_per_s": 160.0,
                     "errors": {}, "server_generate_ms_p50": 30.0}
                    for c in (1, 2)
                ],
            })

        def test_scale(record_scenario):
            record_scenario("serving.scaling", {
                "node": "n1", "allocatable": 1, "free_gpus_besides_the_first_replica": 0, "replicas": 2,
                "bound": 1, "pending": 1,
                "pending_replica": {
                    "pod": "gpt2-x", "scheduler": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
                    "rule": "insufficient-gpu", "cause": "no GPU free", "fix": "add GPU nodes",
                },
            })
            pytest.fail("the extra replica was bound")
        """

    def test_the_serving_records_make_a_report_section_and_count_in_the_verdict(self, suite):
        suite.makeconftest("import pytest\n\n@pytest.fixture\ndef device_plugin_facts():\n    return None\n")
        suite.makepyfile(test_s=textwrap.dedent(self.SERVING_TEST))
        result = suite.runpytest("--target=local", "-m", "serving", "--report-dir=out")
        result.assert_outcomes(passed=1, failed=1)
        report = report_json(suite)
        assert report["outcome"] == "failed" and report["schema_version"] == "1.5"
        assert [s["group"] for s in report["scenarios"]] == ["serving", "serving"]
        serving = report["serving"]
        assert [lv["concurrency"] for lv in serving["levels"]] == [1, 2]
        assert serving["scaling"]["pending_replica"]["rule"] == "insufficient-gpu"
        page = (suite.path / "out" / "report.html").read_text()
        assert "Serving: GPT-2 service under load" in page
        assert 'data-clients="1"' in page and 'data-clients="2"' in page
        assert "Insufficient nvidia.com/gpu" in page and "gpt2-x" in page
        junit = (suite.path / "out" / "junit.xml").read_text()
        assert 'name="serving.scaling.pending"' in junit and 'name="serving.levels"' in junit

    @pytest.mark.parametrize(
        ("option", "message"),
        [
            ("--serving-levels=1,x", "*--serving-levels (from command line): '1,x': expected a comma list*"),
            (
                "--serving-max-error-rate=5",
                "*--serving-max-error-rate (from command line): 5.0 is a fraction*",
            ),
            ("--serving-new-tokens=0", "*--serving-new-tokens (from command line): 0 must be 1..256*"),
        ],
    )
    def test_bad_serving_options_end_the_run_before_it_starts(self, suite, option, message):
        suite.makepyfile(test_a="def test_a():\n    pass\n")
        result = suite.runpytest("--target=local", option)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([message])
