"""Make garbled.log: h100.log cut off in the middle of the probe document (a pod killed mid-write).

The testbed serves it as a pod log to exercise the suite's error path (parse_document must raise
ProbeOutputError naming the truncation). Re-run after re-recording h100.log:
    python tests/data/recordings/make_garbled.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "h100.log"
TARGET = HERE / "garbled.log"


def garble(text: str) -> str:
    """The log up to the middle of its JSON document (the stderr lines before it are kept)."""
    start = text.index('{\n  "schema_version"')
    return text[: start + (len(text) - start) // 2]


def main() -> None:
    """Write garbled.log next to h100.log."""
    TARGET.write_text(garble(SOURCE.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {TARGET} ({TARGET.stat().st_size} bytes, cut from {SOURCE.name})")


if __name__ == "__main__":
    main()
