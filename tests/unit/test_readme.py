"""The README's options table is generated from the code; this keeps the two from drifting apart."""

from pathlib import Path

from k8s_gpu_acceptance.settings import options_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_options_table_matches_the_code():
    text = README.read_text()
    start = text.index("<!-- options-table")
    body = text[text.index("\n", start) + 1 : text.index("<!-- /options-table -->")].strip()
    assert body == options_markdown(), "regenerate with: python -m k8s_gpu_acceptance.settings"


def test_readme_names_the_two_quick_start_commands():
    text = README.read_text()
    assert "make acceptance" in text and "make test" in text
