"""The probe's parsers on real captures from the H100 (tests/data/h100/) and on garbled/truncated input."""

from __future__ import annotations

from pathlib import Path

import pytest
from gpu_probe.document import parse_document
from gpu_probe.parsers import (
    bytes_to_mib,
    compute_mode_name,
    cuda_version_string,
    current_mode,
    enabled_flag,
    normalise_nvml_gpu,
    nvml_text,
    parse_proc_driver_version,
    parse_proc_gpu_information,
    parse_smi_query_csv,
    parse_smi_table,
    smi_value,
    version_tuple,
)
from gpu_probe.stats import percentile
from hypothesis import given, settings
from hypothesis import strategies as st

DATA = Path(__file__).resolve().parents[1] / "data"
H100 = DATA / "h100"
UUID = "GPU-015810f2-a904-11ca-221a-329bc9346c09"  # the GPU of the captures in tests/data/h100/
H100_LOG_UUID = "GPU-f26e483c-f2d3-e076-3a92-ed1896740be4"  # the GPU of tests/data/recordings/h100.log


def read(name: str) -> str:
    return (H100 / name).read_text(encoding="utf-8")


def test_query_csv_from_h100() -> None:
    (gpu,) = parse_smi_query_csv(read("nvidia-smi-query.csv"))
    assert gpu == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": UUID,
        "driver_version": "580.159.04",
        "memory_total_mib": 81559,
        "memory_used_mib": 0,
        "utilization_gpu_pct": 0,
        "temperature_c": 36,
        "power_draw_w": 129.48,
        "pstate": "P0",
        "persistence_mode": "Enabled",
        "mig_mode": "Disabled",
        "compute_mode": "Default",
        "pci_bus_id": "00000000:00:06.0",
    }


def test_query_csv_without_header_is_refused() -> None:
    # noheader,nounits output has no header naming the fields: nothing is guessed from column order.
    assert parse_smi_query_csv(read("nvidia-smi-query-nounits.csv")) == []


def test_query_csv_not_available_markers_and_units() -> None:
    text = (
        "index, name, memory.used [MiB], power.draw [W], utilization.gpu [%]\n"
        "3, T4, [N/A], [Not Supported], 7 %\n"
    )
    assert parse_smi_query_csv(text) == [
        {"index": 3, "name": "T4", "memory_used_mib": None, "power_draw_w": None, "utilization_gpu_pct": 7}
    ]


def test_query_csv_truncated_row_is_dropped() -> None:
    text = read("nvidia-smi-query.csv")
    header, row = text.splitlines()[:2]
    assert parse_smi_query_csv(header + "\n" + row[: len(row) // 2]) == []


def test_query_csv_garbled_numbers_become_none() -> None:
    text = "index, memory.total [MiB], temperature.gpu\nzero, lots MiB, 44.5\n"
    assert parse_smi_query_csv(text) == [{"index": None, "memory_total_mib": None, "temperature_c": None}]


def test_table_from_h100() -> None:
    table = parse_smi_table(read("nvidia-smi.txt"))
    assert table["smi_version"] == "580.159.04"
    assert table["driver_version"] == "580.159.04"
    assert table["cuda_version"] == "13.0"
    assert table["no_running_processes"] is True
    assert table["processes"] == []
    assert table["gpus"] == [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "persistence_mode": "Enabled",
            "pci_bus_id": "00000000:00:06.0",
            "ecc_uncorrected": "0",
            "temperature_c": 36,
            "pstate": "P0",
            "power_draw_w": 129.0,
            "power_cap_w": 700.0,
            "memory_used_mib": 0,
            "memory_total_mib": 81559,
            "utilization_gpu_pct": 0,
            "compute_mode": "Default",
            "mig_mode": "Disabled",
        }
    ]


def test_table_process_rows_from_h100_with_a_cuda_process() -> None:
    # Captured while a python3 process held a CUDA context on the H100.
    table = parse_smi_table(read("nvidia-smi-busy.txt"))
    assert table["no_running_processes"] is False
    assert table["processes"] == [
        {"gpu": 0, "pid": 786, "type": "C", "name": "python3", "memory_used_mib": 612}
    ]
    assert table["gpus"][0]["memory_used_mib"] > 0


def test_table_truncated_after_header_keeps_versions() -> None:
    text = read("nvidia-smi.txt")
    table = parse_smi_table(text[: text.index("| GPU  Name")])
    assert table["driver_version"] == "580.159.04"
    assert table["gpus"] == []


def test_table_error_message_parses_to_nothing() -> None:
    text = (
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
        "latest NVIDIA driver is installed and running.\n"
    )
    table = parse_smi_table(text)
    assert table["driver_version"] is None
    assert table["gpus"] == []


@given(st.text(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_parsers_never_raise_on_garbage(text: str) -> None:
    parse_smi_table(text)
    parse_smi_query_csv(text)
    parse_proc_driver_version(text)
    parse_proc_gpu_information(text)


@given(cut=st.integers(min_value=0, max_value=2000), junk=st.text(max_size=50))
@settings(max_examples=300, deadline=None)
def test_parsers_never_raise_on_truncated_captures(cut: int, junk: str) -> None:
    for name in ("nvidia-smi.txt", "nvidia-smi-query.csv", "nvidia-smi-q.txt"):
        text = read(name)[:cut] + junk
        table = parse_smi_table(text)
        assert len(table["gpus"]) <= 1
        for gpu in parse_smi_query_csv(text):
            assert gpu["uuid"] in (None, UUID) or gpu["uuid"].startswith(UUID[: len(gpu["uuid"])])


def test_proc_driver_version_from_h100() -> None:
    assert parse_proc_driver_version(read("proc-driver-version.txt")) == {
        "driver_version": "580.159.04",
        "kernel_module": "NVIDIA UNIX Open Kernel Module",
        "arch": "x86_64",
        "gcc": "gcc version 15.3.0 (GCC)",
    }


def test_proc_driver_version_proprietary_module() -> None:
    text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\n"
    parsed = parse_proc_driver_version(text)
    assert parsed["driver_version"] == "535.183.01"
    assert parsed["kernel_module"] == "NVIDIA UNIX x86_64 Kernel Module"


def test_proc_gpu_information_from_h100() -> None:
    assert parse_proc_gpu_information(read("proc-gpu-information.txt")) == {
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": UUID,
        "pci_bus_id": "0000:00:06.0",
        "device_minor": 0,
    }


def h100_document() -> dict:
    return parse_document((DATA / "recordings" / "h100.log").read_text(encoding="utf-8"))


def test_nvml_raw_values_recorded_on_h100_normalise_to_the_metrics() -> None:
    driver = h100_document()["layers"]["driver"]
    raw = driver["evidence"]["nvml_raw"]
    assert (
        cuda_version_string(raw["cuda_driver_version_int"])
        == driver["metrics"]["cuda_driver_version"]
        == "13.0"
    )
    (gpu,) = [normalise_nvml_gpu(g) for g in raw["gpus_raw"]]
    assert gpu == driver["metrics"]["gpus"][0]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3"
    # NVML agrees with /proc/driver/nvidia/gpus
    assert gpu["uuid"] == driver["evidence"]["proc_gpus"][0]["uuid"] == H100_LOG_UUID
    assert gpu["memory_total_mib"] == 81559
    assert gpu["persistence_mode"] == "Enabled"
    assert gpu["mig_mode"] == "Disabled"
    assert gpu["ecc_mode"] == "Enabled"
    assert gpu["compute_mode"] == "Default"


@pytest.mark.parametrize(
    ("func", "raw", "expected"),
    [
        (nvml_text, b"NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"),  # pynvml < 11.5 returned bytes
        (nvml_text, "580.159.04", "580.159.04"),
        (nvml_text, None, None),
        (cuda_version_string, 13000, "13.0"),
        (cuda_version_string, 12040, "12.4"),
        (cuda_version_string, 11080, "11.8"),
        (cuda_version_string, 0, None),
        (cuda_version_string, "13000", None),
        (bytes_to_mib, 85520809984, 81559),
        (bytes_to_mib, None, None),
        (enabled_flag, 1, "Enabled"),
        (enabled_flag, 0, "Disabled"),
        (enabled_flag, None, None),
        (current_mode, [0, 0], "Disabled"),
        (current_mode, [1, 0], "Enabled"),
        (current_mode, None, None),
        (compute_mode_name, 0, "Default"),
        (compute_mode_name, 3, "Exclusive_Process"),
        (compute_mode_name, 9, "Unknown(9)"),
        (smi_value, " [N/A] ", None),
        (smi_value, "[Not Supported]", None),
        (version_tuple, "13.0", (13, 0)),
        (version_tuple, "V12.4.131", (12, 4, 131)),
        (version_tuple, "garbage", None),
        (version_tuple, None, None),
    ],
)
def test_nvml_and_version_normalisation(func, raw, expected) -> None:
    assert func(raw) == expected


def test_normalise_nvml_gpu_refused_values_stay_none() -> None:
    gpu = normalise_nvml_gpu({"index": 0, "name": b"T4", "retired_pages": {"single_bit_ecc": [1, 2]}})
    assert gpu["name"] == "T4"
    assert gpu["memory_total_mib"] is None
    assert gpu["retired_pages"] == {"single_bit_ecc": 2}
    assert gpu["remapped_rows"] is None


def test_percentile_matches_numpy_linear() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([10.0], 95) == 10.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    with pytest.raises(ValueError):
        percentile([], 50)
