"""The testbed's state file is shared by every checkout on the machine: keys another version wrote survive."""

from __future__ import annotations

import json
from pathlib import Path

from testbed.state import State

FIELDS = {
    "cluster_name": "c",
    "kwok_workdir": "/w",
    "kubeconfig": "/k",
    "bin_dir": "/b",
    "s3_endpoint": "http://127.0.0.1:1",
    "credentials_file": "/c",
    "minio_data_dir": "/m",
}


def test_a_key_another_version_wrote_is_kept_through_load_and_save(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps({**FIELDS, "future": {"controller": {"pid": 42}}}))
    state = State.load(tmp_path)
    assert state is not None and state.unknown == {"future": {"controller": {"pid": 42}}}
    state.nodes = ["n1"]
    state.save(tmp_path)
    saved = json.loads((tmp_path / "state.json").read_text())
    assert (
        saved["future"] == {"controller": {"pid": 42}} and saved["nodes"] == ["n1"] and "unknown" not in saved
    )
