"""The nvidia_smi layer on real files: which nvidia-smi it runs, and why one that exists cannot start.

The H100 cluster run (2026-11-25): CDI mounted the host's /usr/bin/nvidia-smi into the pod, exec said ENOENT,
and the layer crashed with a traceback instead of naming the missing loader.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from gpu_probe.core import Context, LayerResult, Options, run_layer
from gpu_probe.layers import nvidia_smi


def _executable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def _layer(monkeypatch: pytest.MonkeyPatch, path_dirs: list[Path], fallbacks: tuple[str, ...]) -> LayerResult:
    monkeypatch.setenv("PATH", os.pathsep.join(str(d) for d in path_dirs))
    monkeypatch.setattr(nvidia_smi, "FALLBACK_PATHS", fallbacks)
    return run_layer(
        "nvidia_smi", nvidia_smi.measure, Context(options=Options(), env={}, in_kubernetes=True), 10
    )


def test_the_interpreter_of_an_elf_program_and_of_a_script(tmp_path: Path) -> None:
    ls = shutil.which("ls")
    assert ls is not None
    assert nvidia_smi.program_interpreter(ls) in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1")
    script = _executable(tmp_path / "s", "#!/nix/store/abc-bash/bin/sh -e\necho\n")
    assert nvidia_smi.program_interpreter(script) == "/nix/store/abc-bash/bin/sh"
    assert nvidia_smi.program_interpreter(str(tmp_path / "missing")) is None


def test_an_unstartable_nvidia_smi_fails_with_its_missing_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bin").mkdir()
    _executable(tmp_path / "bin" / "nvidia-smi", "#!/nix/store/gone/ld-linux-x86-64.so.2\n")
    result = _layer(monkeypatch, [tmp_path / "bin"], ())
    assert result.status == "fail"
    assert "interpreter /nix/store/gone/ld-linux-x86-64.so.2 is not in this container" in (result.error or "")
    assert result.diagnosis and "loader" in result.diagnosis["cause"]


def test_the_next_candidate_runs_when_the_first_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bin").mkdir()
    _executable(tmp_path / "bin" / "nvidia-smi", "#!/nix/store/gone/sh\n")
    good = _executable(
        tmp_path / "nvidia-smi-ok", "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not'\n"
    )
    result = _layer(monkeypatch, [tmp_path / "bin"], (good,))
    assert result.metrics["path"] == good  # it ran: the failure is now nvidia-smi's own output, not ENOENT
    assert "cannot start" in result.evidence["unstartable"][0]
    assert result.status == "fail" and "exited 0" in (result.error or "")


def test_a_system_library_missing_for_nvidia_smi_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The H100 cluster's small image (python3 alone): the driver's nvidia-smi could not load libpthread.
    (tmp_path / "bin").mkdir()
    message = (
        "/usr/local/nvidia/bin/nvidia-smi: error while loading shared libraries: libpthread.so.0: "
        "cannot open shared object file: No such file or directory"
    )
    _executable(tmp_path / "bin" / "nvidia-smi", f"#!/bin/sh\necho '{message}' >&2\nexit 127\n")
    result = _layer(monkeypatch, [tmp_path / "bin"], ())
    assert result.status == "fail" and "exited 127" in (result.error or "")
    assert result.diagnosis and "libpthread.so.0" in result.diagnosis["cause"]
    assert "libpthread.so.0" in result.diagnosis["fix"]
