"""parse_document / validate_document: the suite's reader of pod logs, on noise, truncation and garbage."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from gpu_probe.document import (
    LAYER_NAMES,
    SCHEMA_VERSION,
    ProbeOutputError,
    document_problems,
    json_safe,
    parse_document,
    render_document,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def minimal_document() -> dict[str, Any]:
    """The smallest document that satisfies the contract."""
    layer = {
        "status": "pass",
        "duration_s": 0.1,
        "metrics": {},
        "evidence": {},
        "error": None,
        "diagnosis": None,
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "probe": {"name": "gpu-probe", "version": "0.1.0", "argv": ["--json"]},
        "started_at": "2026-11-22T10:00:00Z",
        "duration_s": 1.0,
        "identity": {
            "hostname": "h",
            "pod_name": None,
            "pod_namespace": None,
            "node_name": None,
            "in_kubernetes": False,
            "python": "3.12.3",
            "platform": "Linux",
            "user_uid": 1000,
        },
        "env": {"NVIDIA_VISIBLE_DEVICES": None},
        "exit_code": 0,
        "layers": {name: dict(layer) for name in LAYER_NAMES},
    }


DOC_TEXT = render_document(minimal_document())
# Log noise as pod logs really hold it: warnings, progress, even JSON lines of other tools.
noise = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300).filter(
    lambda s: '"schema_version"' not in s
)


def test_round_trip_and_layout() -> None:
    assert DOC_TEXT.startswith('{\n  "schema_version": "1.0"')
    assert parse_document(DOC_TEXT) == minimal_document()


@given(before=noise, after=noise)
@settings(max_examples=200, deadline=None)
def test_noise_before_and_after_is_tolerated(before: str, after: str) -> None:
    assert parse_document(before + "\n" + DOC_TEXT + "\n" + after)["schema_version"] == SCHEMA_VERSION


def test_noise_that_looks_like_json_is_skipped() -> None:
    text = '{"level": "warn", "msg": "x"}\n{ not json\n' + DOC_TEXT + "\n{}\n"
    assert parse_document(text)["exit_code"] == 0


def test_bytes_input() -> None:
    assert parse_document(b"noise\n" + DOC_TEXT.encode())["layers"]["gpt2"]["status"] == "pass"


@given(cut=st.integers(min_value=0, max_value=len(DOC_TEXT) - 1), before=noise)
@settings(max_examples=300, deadline=None)
def test_any_truncation_raises_a_clear_error(cut: int, before: str) -> None:
    with pytest.raises(ProbeOutputError) as info:
        parse_document(before + DOC_TEXT[:cut])
    message = str(info.value)
    assert "expected" in message


@given(st.one_of(st.text(max_size=500), st.binary(max_size=500)))
@settings(max_examples=300, deadline=None)
def test_garbage_only_ever_raises_probe_output_error(garbage: str | bytes) -> None:
    with pytest.raises(ProbeOutputError):
        parse_document(garbage)


def test_empty_input_message() -> None:
    with pytest.raises(ProbeOutputError, match="empty"):
        parse_document("  \n")


def test_no_document_message_shows_first_bytes() -> None:
    with pytest.raises(ProbeOutputError, match=r"found none.*Traceback"):
        parse_document("Traceback (most recent call last):\n  ImportError: x\n")


def test_truncated_message_names_json_error() -> None:
    with pytest.raises(ProbeOutputError, match=r"not valid JSON.*truncated"):
        parse_document(DOC_TEXT[: len(DOC_TEXT) // 2])


def test_cut_inside_a_string_is_named_truncated() -> None:
    """json reports a cut string at the string's start; the message must still say the output ends there."""
    cut = DOC_TEXT.index('"schema_version"') + len('"schema_version": "1')
    with pytest.raises(ProbeOutputError, match=r"Unterminated string.*truncated"):
        parse_document(DOC_TEXT[:cut])


def test_garbled_middle_message() -> None:
    with pytest.raises(ProbeOutputError, match=r"garbled output"):
        parse_document(DOC_TEXT.replace('"exit_code": 0', '"exit_code": 0 0') + "\nmore log\n")


def test_wrong_schema_version() -> None:
    doc = minimal_document()
    doc["schema_version"] = "2.0"
    with pytest.raises(ProbeOutputError, match=r"expected schema_version '1\.0'.*got '2\.0'"):
        parse_document(json.dumps(doc))


def test_minor_schema_version_is_accepted() -> None:
    doc = minimal_document()
    doc["schema_version"] = "1.7"
    assert parse_document(json.dumps(doc))["schema_version"] == "1.7"


def test_a_missing_layer_is_not_a_broken_document() -> None:
    """A probe from before a layer was added: the document parses; the reader calls the layer not measured."""
    doc = copy.deepcopy(minimal_document())
    doc["layers"].pop("gpt2")
    assert document_problems(doc) == []
    assert "gpt2" not in parse_document(json.dumps(doc))["layers"]
    doc["layers"]["driver"].pop("evidence")
    assert document_problems(doc) == ["layer 'driver': missing key 'evidence'"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.pop("layers"), "missing top-level key 'layers'"),
        (lambda d: d["layers"]["driver"].update(status="ok"), "status 'ok' is not one of"),
        (lambda d: d["layers"]["driver"].update(duration_s="1"), "duration_s is not a number"),
        (lambda d: d["layers"]["driver"].update(diagnosis={"cause": "x"}), "diagnosis is neither null"),
        (lambda d: d["layers"]["driver"].pop("evidence"), "missing key 'evidence'"),
        (lambda d: d.update(exit_code=True), "exit_code is not an integer"),
        (lambda d: d["identity"].pop("hostname"), "identity lacks 'hostname'"),
    ],
)
def test_structure_problems(mutate: Any, expected: str) -> None:
    doc = copy.deepcopy(minimal_document())
    mutate(doc)
    assert any(expected in problem for problem in document_problems(doc))
    with pytest.raises(ProbeOutputError, match="breaks its schema"):
        parse_document(json.dumps(doc))


def test_json_safe_makes_strict_json() -> None:
    value = {"nan": float("nan"), "inf": float("inf"), "t": (1, 2), "b": b"x", "o": object}
    cleaned = json_safe(value)
    assert cleaned == {"nan": None, "inf": None, "t": [1, 2], "b": "x", "o": str(object)}
    json.dumps(cleaned, allow_nan=False)
