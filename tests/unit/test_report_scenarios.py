"""A run of scenario checks only (`pytest -m sharing`), as on the H100 cluster on 2026-11-25: its report must
say what the checks found and passed, not `not-run` with an unknown environment.

The findings below are the ones that run recorded (report.json `environment_details.sharing` of
docs/h100-gpu-cluster-2026-11-25/time-slicing-4 on main), the node's labels those GFD wrote on that node.
"""

from __future__ import annotations

import datetime as dt

from k8s_gpu_acceptance.cluster import ClusterFacts, DevicePluginFacts, NodeFacts
from k8s_gpu_acceptance.diagnosis import Diagnosis
from k8s_gpu_acceptance.report import SCHEMA_VERSION, build_json_report, finding_figures, html_summary
from k8s_gpu_acceptance.settings import Settings
from k8s_gpu_acceptance.state import RunState, ScenarioOutcome
from k8s_gpu_acceptance.summary import markdown_summary

TIME_SLICING = {
    "node": "vm",
    "detected_by": ["nvidia.com/gpu.sharing-strategy=time-slicing", "nvidia.com/gpu.replicas=4"],
    "replicas": 4,
    "exclusive_bf16_tflops": 686.0,
    "all_running_together_s": 6.2,
    "shares": [
        {"pod": f"gpu-ts-{i}", "uuid": "GPU-7b5d1333", "tflops": t, "share": s, "expected": 0.25, "ok": True}
        for i, (t, s) in enumerate([(174.2, 0.254), (155.2, 0.226), (154.9, 0.226), (155.8, 0.227)])
    ],
    "tolerance": "0.5x..1.5x of 1/N",
}
MULTI = {
    "node": "vm",
    "uuids_seen": {"probe (requests nvidia.com/gpu)": ["GPU-7b5d1333"], "shared (no request)": []},
    "mode": "not shared: only the requesting container sees the GPU",
}
LABELS = {
    "kubernetes.io/hostname": "vm",
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-SHARED",
    "nvidia.com/cuda.driver-version.full": "580.159.04",
    "nvidia.com/cuda.runtime-version.full": "13.0",
}
SKIP_MPS = "mps: no GPU node has nvidia.com/gpu.sharing-strategy=mps"


def sharing_only_state() -> RunState:
    started = dt.datetime(2026, 11, 25, 20, 44, 48, tzinfo=dt.timezone.utc)
    node = NodeFacts("vm", True, False, 4, 4, LABELS, [])
    state = RunState(
        run_id="20261125-204448-1c64ce",
        target="k8s",
        started_at=started,
        finished_at=started + dt.timedelta(seconds=73.2),
        cluster=ClusterFacts("https://127.0.0.1:32764", "context kwok", True, None, "v1.36.1", [node]),
        device_plugin=DevicePluginFacts(daemonsets=[{"image": "local/nvidia-device-plugin:v0.19.1"}]),
    )
    state.scenarios.update(time_slicing=TIME_SLICING, multi_container=MULTI)
    state.scenario_outcomes.update(
        {
            "t.py::test_containers_of_one_pod_on_one_gpu": ScenarioOutcome(
                "containers_of_one_pod_on_one_gpu", "sharing", "passed", 5.13
            ),
            "t.py::test_time_slicing_replicas_share_one_gpu": ScenarioOutcome(
                "time_slicing_replicas_share_one_gpu", "sharing", "passed", 61.23
            ),
            "t.py::test_mps_client_sees_its_share": ScenarioOutcome(
                "mps_client_sees_its_share", "sharing", "skipped", 0.0, SKIP_MPS
            ),
        }
    )
    state.scenario_findings.update(
        {
            "t.py::test_containers_of_one_pod_on_one_gpu": ["multi_container"],
            "t.py::test_time_slicing_replicas_share_one_gpu": ["time_slicing"],
        }
    )
    return state


def test_a_sharing_only_run_passes_on_its_scenario_checks_with_their_figures():
    report = build_json_report(sharing_only_state(), Settings())
    assert SCHEMA_VERSION == "1.5" and report["schema_version"] == "1.5"
    assert report["outcome"] == "passed"
    assert report["scenario_counts"]["passed"] == 2 and report["scenario_counts"]["skipped"] == 1
    assert report["counts"]["not-run"] == 8  # no layer ran: that stays true
    by_name = {entry["name"]: entry for entry in report["scenarios"]}
    slicing = by_name["time_slicing_replicas_share_one_gpu"]
    assert (slicing["group"], slicing["outcome"]) == ("sharing", "passed")
    figures = slicing["findings"]["time_slicing"]
    assert figures["shares"] == [0.254, 0.226, 0.226, 0.227]
    assert figures["expected_share"] == 0.25 and figures["replicas"] == 4
    assert figures["exclusive_bf16_tflops"] == 686.0
    multi = by_name["containers_of_one_pod_on_one_gpu"]["findings"]["multi_container"]
    assert multi["gpus_seen"] == {"probe (requests nvidia.com/gpu)": 1, "shared (no request)": 0}
    assert by_name["mps_client_sees_its_share"]["message"] == SKIP_MPS


def test_a_sharing_only_run_fills_its_environment_from_the_cluster():
    environment = build_json_report(sharing_only_state(), Settings())["environment"]
    assert environment["node"] == "vm"
    assert environment["driver_version"] == "580.159.04 (node label)"
    assert environment["cuda_driver_version"] == "13.0 (node label)"
    assert environment["gpu_model"] == "NVIDIA-H100-80GB-HBM3-SHARED (node label)"
    assert environment["device_plugin_image"] == "local/nvidia-device-plugin:v0.19.1"


def test_a_failed_scenario_check_fails_the_run_and_names_its_cause():
    state = sharing_only_state()
    diagnosis = Diagnosis("sharing", "shares 1.0, 1.0", "time-slicing is not in effect", "check the config")
    state.scenario_outcomes["t.py::test_time_slicing_replicas_share_one_gpu"] = ScenarioOutcome(
        "time_slicing_replicas_share_one_gpu", "sharing", "failed", 61.0, diagnosis.render(), diagnosis
    )
    report = build_json_report(state, Settings())
    assert report["outcome"] == "failed"
    page = "".join(html_summary(state, Settings()))
    assert "FAILED" in page and "time-slicing is not in effect" in page
    assert "time-slicing is not in effect" in markdown_summary(report)


def test_the_html_shows_the_scenario_checks_under_the_verdict():
    page = "".join(html_summary(sharing_only_state(), Settings()))
    banner = page.index('class="banner b-passed"')
    scenarios = page.index("Scenario checks (2 passed, 1 skipped)")
    assert banner < scenarios < page.index("Key figures")
    assert "0.254, 0.226, 0.226, 0.227" in page
    assert "gpus_seen probe (requests nvidia.com/gpu): 1, shared (no request): 0" in page
    assert 'Layers: <span class="o-not-run">not-run</span>' in page  # the layers' own verdict
    assert SKIP_MPS in page


def test_distinct_gpus_figures_count_pods_and_distinct_uuids():
    data = {"node": "n8", "pods": {"p0": ["GPU-a"], "p1": ["GPU-b"], "p2": ["GPU-b"]}, "problems": ["twice"]}
    figures = finding_figures("distinct_gpus", data)
    assert figures == {"node": "n8", "pods": 3, "gpus_seen": 3, "distinct_gpus": 2, "problems": 1}
