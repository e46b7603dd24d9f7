"""report.json, the pytest-html extras and summary, and the report paths, on a realistic H100 run."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from gpu_probe.document import parse_document

from k8s_gpu_acceptance.cluster import ClusterFacts, DevicePluginFacts
from k8s_gpu_acceptance.diagnosis import Diagnosis
from k8s_gpu_acceptance.document import ProbeDocument
from k8s_gpu_acceptance.html_plot import latency_svg, nice_ticks, percentile
from k8s_gpu_acceptance.layers import LAYER_NAMES
from k8s_gpu_acceptance.pods import PodRun
from k8s_gpu_acceptance.probe import ProbeRun
from k8s_gpu_acceptance.report import (
    REDACTED,
    SCHEMA,
    SCHEMA_VERSION,
    build_json_report,
    configure_report_paths,
    environment_summary,
    html_extras,
    html_summary,
    is_secret_key,
    redact,
    write_json_report,
)
from k8s_gpu_acceptance.settings import Settings
from k8s_gpu_acceptance.state import LayerOutcome, RunState

REPO = Path(__file__).resolve().parents[2]
H100_LOG = REPO / "tests" / "data" / "recordings" / "h100.log"
ENV_SECRET = "planted+AWS/secret/value/0123456789"
ENV_KEY_ID = "AKIAPLANTEDKEYID0001"


@pytest.fixture(autouse=True)
def _credentials_in_env(monkeypatch):
    """The process holds real-looking credentials: they must never reach a report."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ENV_KEY_ID)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def probe_document() -> dict:
    """The real H100 recording, as if run in a pod, with secrets planted where a careless pod leaks them."""
    doc = parse_document(H100_LOG.read_text(encoding="utf-8"))
    doc["identity"].update(pod_name="gpu-probe-x1", pod_namespace="gpu-acc-1", node_name="gpu-node-1")
    doc["probe"]["argv"].append(f"--token={ENV_SECRET}")
    doc["env"].update(
        HF_TOKEN="hf_PlantedTokenValue123456",
        AWS_SECRET_ACCESS_KEY="another-planted-secret-in-the-pod",
        EXTRA=f"x{ENV_SECRET}y",
    )
    return doc


LATENCIES = probe_document()["layers"]["gpt2"]["metrics"]["token_latencies_ms"]


def make_state(**layers: LayerOutcome) -> RunState:
    started = dt.datetime(2026, 11, 22, 10, 0, 0, tzinfo=dt.timezone.utc)
    pod = PodRun("gpu-acc-1", "gpu-probe-x1", node_name="gpu-node-1", image="registry/probe:1")
    state = RunState(
        run_id="20261122-100000-a1b2c3",
        target="k8s",
        started_at=started,
        finished_at=started + dt.timedelta(seconds=42.5),
        cluster=ClusterFacts("https://10.0.0.1:6443", "kubeconfig k, context c", True, None, "v1.31.2"),
        device_plugin=DevicePluginFacts(daemonsets=[{"image": "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"}]),
        probe=ProbeRun(
            "k8s", ProbeDocument(probe_document()), "", None, "pod gpu-acc-1/gpu-probe-x1", 9.0, pod
        ),
    )
    state.layers.update(layers)
    return state


def passing_state() -> RunState:
    return make_state(**{name: LayerOutcome(name, "passed", 0.5) for name in LAYER_NAMES})


DRIVER_DIAGNOSIS = Diagnosis(
    "driver",
    "no /dev/nvidia* device nodes in the pod <script>alert(1)</script>",
    "the container runtime did not inject the GPU",
    "install the NVIDIA Container Toolkit & set runtimeClassName: nvidia",
    "no-device-nodes",
)


def failing_state() -> RunState:
    """scheduling passed, driver failed, the rest blocked (recorded in reverse: order comes from LAYERS)."""
    outcomes = {
        "gpu_perf": LayerOutcome("gpu_perf", "blocked", blocked_by="driver", message="BLOCKED by driver"),
        "gpt2": LayerOutcome("gpt2", "blocked", blocked_by="driver", message="BLOCKED by driver"),
        "torch_cuda": LayerOutcome("torch_cuda", "blocked", blocked_by="driver", message="BLOCKED by driver"),
        "nvidia_smi": LayerOutcome("nvidia_smi", "blocked", blocked_by="driver", message="BLOCKED by driver"),
        "driver": LayerOutcome(
            "driver",
            "failed",
            0.01,
            message=DRIVER_DIAGNOSIS.render(),
            diagnosis=DRIVER_DIAGNOSIS,
            evidence={"probe error": f"NVML: libnvidia-ml.so.1 not found (key {ENV_SECRET})"},
        ),
        "scheduling": LayerOutcome("scheduling", "passed", 3.2),
    }
    return make_state(**outcomes)


# ------------------------------------------------------------------------------------------- report.json


def test_json_report_has_the_versioned_schema_and_run_facts():
    report = build_json_report(passing_state(), Settings())
    assert report["schema"] == SCHEMA == "k8s-gpu-acceptance/report"
    assert report["schema_version"] == SCHEMA_VERSION == "1.5"
    assert report["run_id"] == "20261122-100000-a1b2c3"
    assert report["target"] == "k8s"
    assert report["started_at"] == "2026-11-22T10:00:00+00:00"
    assert report["finished_at"] == "2026-11-22T10:00:42.500000+00:00"
    assert report["duration_s"] == 42.5
    assert report["outcome"] == "passed"
    assert report["counts"]["passed"] == len(LAYER_NAMES)
    assert report["settings"]["thresholds"]["max_token_latency_ms"] == 50.0
    assert report["settings"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert report["probe_document"]["identity"]["node_name"] == "gpu-node-1"
    json.dumps(report, allow_nan=False)  # strictly JSON


def test_environment_summary_derives_the_fingerprint_from_the_probe_and_the_cluster():
    env = environment_summary(passing_state())
    assert env == {
        "cluster_version": "v1.31.2",
        "node": "gpu-node-1",
        "gpu_model": "NVIDIA H100 80GB HBM3",
        "driver_version": "580.159.04",
        "cuda_driver_version": "13.0",
        "cuda_runtime_version": "13.0",
        "torch_version": "2.11.0+cu130",
        "device_plugin_image": "nvcr.io/nvidia/k8s-device-plugin:v0.17.0",
        "probe_image": "registry/probe:1",
        "model": "random-gpt2-small",
    }


def test_environment_summary_counts_identical_gpus_and_says_unknown_without_facts():
    state = passing_state()
    gpus = state.probe_document.data["layers"]["driver"]["metrics"]["gpus"]
    state.probe_document.data["layers"]["driver"]["metrics"]["gpus"] = gpus * 8
    assert environment_summary(state)["gpu_model"] == "8 x NVIDIA H100 80GB HBM3"
    bare = RunState(run_id="r", target="local", started_at=dt.datetime.now(dt.timezone.utc))
    assert set(environment_summary(bare).values()) == {"unknown"}


def test_layers_are_in_suite_order_with_not_run_and_blocked_by():
    report = build_json_report(failing_state(), Settings())
    assert [entry["name"] for entry in report["layers"]] == list(LAYER_NAMES)
    by_name = {entry["name"]: entry for entry in report["layers"]}
    assert by_name["cluster"]["outcome"] == "not-run"
    assert by_name["scheduling"]["outcome"] == "passed"
    assert by_name["driver"]["outcome"] == "failed"
    assert by_name["driver"]["diagnosis"]["fix"].startswith("install the NVIDIA Container Toolkit")
    assert by_name["gpt2"] == {
        **by_name["gpt2"],
        "outcome": "blocked",
        "blocked_by": "driver",
        "title": "GPT-2 generation",
        "depends_on": "torch_cuda",
    }
    assert report["outcome"] == "failed"
    assert report["counts"] == {
        "passed": 1,
        "failed": 1,
        "blocked": 4,
        "skipped": 0,
        "error": 0,
        "not-run": 2,
    }


def test_no_credential_reaches_the_report():
    report = build_json_report(failing_state(), Settings(s3_endpoint_url="http://minio:pw0rd@minio:9000"))
    text = json.dumps(report)
    for secret in (
        ENV_SECRET,
        ENV_KEY_ID,
        "hf_PlantedTokenValue123456",
        "another-planted-secret-in-the-pod",
        "pw0rd",
    ):
        assert secret not in text
    env = report["probe_document"]["env"]
    assert env["HF_TOKEN"] == env["AWS_SECRET_ACCESS_KEY"] == REDACTED
    assert env["EXTRA"] == f"x{REDACTED}y"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "0"
    # Token *metrics* are not secrets.
    gpt2 = report["probe_document"]["layers"]["gpt2"]["metrics"]
    assert gpt2["token_latency_ms_p95"] == 11.788
    assert gpt2["new_tokens"] == 32


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("AWS_SECRET_ACCESS_KEY", True),
        ("AWS_ACCESS_KEY_ID", True),
        ("AWS_SESSION_TOKEN", True),
        ("HF_TOKEN", True),
        ("password", True),
        ("Authorization", True),
        ("apiKey", True),
        ("clientSecret", True),
        ("GITHUB_TOKEN", True),
        ("credentials", True),
        ("session", True),
        ("token_latency_ms_p50", False),
        ("new_tokens", False),
        ("tokens_per_s", False),
        ("key", False),
        ("max_token_latency_ms", False),
        ("NVIDIA_VISIBLE_DEVICES", False),
        ("image_pull_policy", False),
    ],
)
def test_secret_key_names(key, secret):
    assert is_secret_key(key) is secret


def test_redact_masks_kubernetes_env_entries_and_bearer_tokens():
    pod_env = [{"name": "HF_TOKEN", "value": "hf_x"}, {"name": "MODEL", "value": "gpt2"}]
    assert redact(pod_env, secrets=[]) == [
        {"name": "HF_TOKEN", "value": REDACTED},
        {"name": "MODEL", "value": "gpt2"},
    ]
    assert redact("Authorization: Bearer abcdefghijklmnop", secrets=[]) == f"Authorization: Bearer {REDACTED}"
    assert redact({"token": None}, secrets=[]) == {"token": None}


def test_nan_and_datetimes_become_plain_json():
    state = passing_state()
    state.layers["gpu_perf"].metrics["bandwidth_ratio"] = float("nan")
    state.scenarios["seen"] = {"at": dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc)}
    report = build_json_report(state, Settings())
    gpu_perf = next(e for e in report["layers"] if e["name"] == "gpu_perf")
    assert gpu_perf["metrics"]["bandwidth_ratio"] is None
    assert report["environment_details"]["sharing"]["seen"]["at"] == "2026-11-22T00:00:00+00:00"


def test_write_json_report_is_atomic_utf8_and_replaces(tmp_path):
    path = tmp_path / "reports" / "report.json"
    state = failing_state()
    state.probe.pod.node_name = "gpu-nöde-1"
    assert write_json_report(state, Settings(), path) == path
    first = json.loads(path.read_text(encoding="utf-8"))
    assert first["environment"]["node"] == "gpu-nöde-1"
    assert "gpu-nöde-1" in path.read_text(encoding="utf-8")  # UTF-8, not \u escapes
    state.layers["driver"].outcome = "passed"
    write_json_report(state, Settings(), path)
    assert json.loads(path.read_text(encoding="utf-8"))["layers"][3]["outcome"] == "passed"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]  # no temp file left behind


def test_write_json_report_defaults_to_report_dir(tmp_path):
    path = write_json_report(passing_state(), Settings(report_dir=tmp_path / "out"))
    assert path == tmp_path / "out" / "report.json" and path.is_file()


# --------------------------------------------------------------------------------------------------- HTML


def extras_html(outcome: LayerOutcome, state: RunState, settings: Settings | None = None) -> str:
    items = html_extras(outcome, state, settings)
    assert all(item["format_type"] == "html" for item in items)
    return "".join(item["content"] for item in items)


def test_extras_show_the_diagnosis_escaped_and_the_evidence_redacted():
    state = failing_state()
    text = extras_html(state.layers["driver"], state)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>" not in text
    assert "install the NVIDIA Container Toolkit &amp; set runtimeClassName" in text
    assert "libnvidia-ml.so.1 not found" in text and ENV_SECRET not in text


def test_extras_of_a_blocked_layer_name_the_blocker_and_its_fix():
    state = failing_state()
    text = extras_html(state.layers["gpt2"], state)
    assert "Blocked by driver" in text and "install the NVIDIA Container Toolkit" in text


def test_extras_show_the_nvidia_smi_table_and_metrics():
    state = passing_state()
    text = extras_html(state.layers["nvidia_smi"], state)
    assert "Driver Version: 580.159.04" in text
    assert "<th>gpu_count</th><td>1</td>" in text


def test_gpt2_extras_embed_the_latency_plot_with_the_probe_percentiles():
    state = passing_state()
    text = extras_html(state.layers["gpt2"], state, Settings())
    svg = re.search(r"<svg.*?</svg>", text, re.S)
    assert svg is not None
    root = ET.fromstring(svg.group(0))
    ns = {"s": "http://www.w3.org/2000/svg"}
    points = root.find("s:polyline", ns).get("points").split()
    assert len(points) == len(LATENCIES)
    labels = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "p50 11.02 ms" in labels
    assert "p95 11.79 ms" in labels
    assert "budget 50 ms (off scale)" in labels  # 50 ms is 4x the slowest token: named, not drawn
    assert "<th>token_latencies_ms</th>" not in text  # plotted, not dumped


def test_latency_svg_places_the_percentile_lines_at_their_values():
    svg = latency_svg(LATENCIES)
    root = ET.fromstring(svg)
    lines = {
        line.get("class"): float(line.get("y1"))
        for line in root.iter("{http://www.w3.org/2000/svg}line")
        if line.get("class")
    }
    ys = [
        float(p.split(",")[1])
        for p in root.find("{http://www.w3.org/2000/svg}polyline").get("points").split()
    ]
    assert percentile(LATENCIES, 50) == statistics.median(LATENCIES)
    # 31 tokens: the median is one of the points, and the p50 line passes exactly through it.
    assert lines["p50"] == ys[LATENCIES.index(statistics.median(LATENCIES))]
    # Higher latency = higher on the plot = smaller y.
    assert lines["p95"] < lines["p50"]
    assert min(ys) == ys[LATENCIES.index(max(LATENCIES))]


def test_latency_svg_edge_cases():
    assert latency_svg([]) == ""
    assert latency_svg([float("nan")]) == ""
    ET.fromstring(latency_svg([4.2]))
    ET.fromstring(latency_svg([1.0, 2.0], title="a <b> & c"))
    budget = ET.fromstring(latency_svg([6.0, 7.0, 9.5], budget_ms=10.0))
    assert [
        line.get("class") for line in budget.iter("{http://www.w3.org/2000/svg}line") if line.get("class")
    ] == [
        "p50",
        "p95",
        "budget",
    ]
    assert nice_ticks(7.34) == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert nice_ticks(52.5) == [0.0, 20.0, 40.0, 60.0]


def test_summary_has_the_environment_and_a_verdict_per_layer_in_order():
    state = failing_state()
    review_html, env_html, verdict_html, conformance_html = html_summary(state, Settings())
    assert "AI Conformance v1.35" in conformance_html and "not-assessed" in conformance_html
    assert "FAILED" in review_html and "No history" in review_html
    for value in (
        "20261122-100000-a1b2c3",
        "v1.31.2",
        "NVIDIA H100 80GB HBM3",
        "580.159.04",
        "13.0",
        "2.11.0+cu130",
        "nvcr.io/nvidia/k8s-device-plugin:v0.17.0",
        "registry/probe:1",
        "random-gpt2-small",
    ):
        assert value in env_html
    rows = re.findall(r'<tr data-layer="([a-z_0-9]+)">', verdict_html)
    assert rows == list(LAYER_NAMES)
    gpt2_row = re.search(r'<tr data-layer="gpt2">.*?</tr>', verdict_html).group(0)
    assert ">blocked<" in gpt2_row and "<td>driver</td>" in gpt2_row
    assert "not assessed: driver failed (its cause and fix above)" in gpt2_row
    driver_row = re.search(r'<tr data-layer="driver">.*?</tr>', verdict_html).group(0)
    assert "the container runtime did not inject the GPU" in driver_row
    assert "<script>" not in verdict_html and ENV_SECRET not in verdict_html + env_html
    assert 'class="o-failed">failed<' in verdict_html


def test_the_scheduling_time_says_it_is_the_pod_round_trip_and_when_the_pod_ran():
    # The H100 cluster run's page said "Scheduling 15.83 s" beside 0.35 s for the driver: the suite's time
    # for scheduling is the probe pod's whole round trip. Its timeline, as that run's pod recorded it:
    state = passing_state()
    state.layers["scheduling"] = LayerOutcome("scheduling", "passed", 15.831)
    assert state.probe is not None and state.probe.pod is not None
    state.probe.pod.timeline = [
        "+  0.0s Pending on vm",
        "+  0.1s ContainerCreating on vm",
        "+  0.6s Running on vm",
        "+ 14.6s probe exited 0 (Completed) on vm",
    ]
    verdict_html = html_summary(state, Settings())[2]  # review, environment, layers, AI Conformance
    row = re.search(r'<tr data-layer="scheduling">.*?</tr>', verdict_html).group(0)
    assert "15.83 s (pod round trip; Running after 0.6 s)" in row
    assert "which includes the probe pod's whole run" in verdict_html


# -------------------------------------------------------------------------------------------- paths


CONFTEST = textwrap.dedent("""
    import json
    from pathlib import Path

    import pytest

    from k8s_gpu_acceptance.report import configure_report_paths
    from k8s_gpu_acceptance.settings import Settings

    pytest_plugins = ["finishplugin"]


    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(config):
        configure_report_paths(config, Settings(report_dir=Path("out/reports")))


    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(session):
        Path("seen-trylast.json").write_text(json.dumps(seen(session)))


    def seen(session):
        opt = session.config.option
        return {"htmlpath": opt.htmlpath, "xmlpath": opt.xmlpath, "self_contained": opt.self_contained_html,
                "html_exists": Path(opt.htmlpath).is_file(), "xml_exists": Path(opt.xmlpath).is_file()}
""")
# Loaded through pytest_plugins, as k8s_gpu_acceptance/plugin.py is by the suite's conftest.
FINISH_PLUGIN = textwrap.dedent("""
    import json
    from pathlib import Path

    import pytest

    from conftest import seen


    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_sessionfinish(session):
        result = yield
        Path("seen-wrapper.json").write_text(json.dumps(seen(session)))
        terminal = session.config.pluginmanager.get_plugin("terminalreporter")
        terminal.write("\\n")  # the progress line is still open
        terminal.write_line("REPORTS-COMPLETE-HERE")
        return result
""")


def run_pytest(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (where / "conftest.py").write_text(CONFTEST)
    (where / "finishplugin.py").write_text(FINISH_PLUGIN)
    (where / "test_x.py").write_text("def test_ok():\n    assert True\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(where), str(REPO)))}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:k8s_gpu_acceptance.plugin",
            "-q",
            *args,
        ],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_configure_report_paths_defaults_html_and_junit_into_report_dir(tmp_path):
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = json.loads((tmp_path / "seen-wrapper.json").read_text())
    assert seen == {
        "htmlpath": "out/reports/report.html",
        "xmlpath": "out/reports/junit.xml",
        "self_contained": True,
        "html_exists": True,
        "xml_exists": True,
    }
    assert sorted(p.name for p in (tmp_path / "out" / "reports").iterdir()) == ["junit.xml", "report.html"]
    html_text = (tmp_path / "out/reports/report.html").read_text()
    assert "<style" in html_text
    assert 'href="assets/style.css"' not in html_text  # self-contained


def test_reports_are_complete_only_after_a_trylast_sessionfinish_wrapper(tmp_path):
    """Where report.json and the upload belong: pytest-html writes report.html in its own trylast
    pytest_sessionfinish, which pluggy calls AFTER a plugin's plain trylast one (later registered, called
    later). A `wrapper=True, trylast=True` impl runs its post-yield after every plain impl, and before the
    terminal's final summary line."""
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    plain = json.loads((tmp_path / "seen-trylast.json").read_text())
    assert plain["xml_exists"] is True
    assert plain["html_exists"] is False  # too early: the pitfall
    assert json.loads((tmp_path / "seen-wrapper.json").read_text())["html_exists"] is True
    lines = result.stdout.splitlines()
    marker = lines.index("REPORTS-COMPLETE-HERE")
    assert marker < next(i for i, line in enumerate(lines) if re.match(r"^1 passed", line))


def test_configure_report_paths_keeps_the_users_own_html_and_junitxml(tmp_path):
    result = run_pytest(tmp_path, "--html=mine.html", "--junitxml=mine.xml")
    assert result.returncode == 0, result.stdout + result.stderr
    seen = json.loads((tmp_path / "seen-wrapper.json").read_text())
    assert seen["htmlpath"] == "mine.html" and seen["xmlpath"] == "mine.xml"
    assert (tmp_path / "mine.html").is_file() and (tmp_path / "mine.xml").is_file()
    assert not (tmp_path / "out" / "reports" / "report.html").exists()


def test_configure_report_paths_outside_pytest_creates_the_dir(tmp_path):
    class Options:
        htmlpath = None
        self_contained_html = False
        xmlpath = None

    class Config:
        option = Options()

    configure_report_paths(Config(), Settings(report_dir=tmp_path / "r"))  # type: ignore[arg-type]
    assert (tmp_path / "r").is_dir()
    assert Config.option.htmlpath == str(tmp_path / "r" / "report.html")
    assert Config.option.self_contained_html is True
    assert Config.option.xmlpath == str(tmp_path / "r" / "junit.xml")
