"""Thin on purpose: the suite's hooks and fixtures live in fixtures/, by concern.

`pip install -e .` registers fixtures.plugin as a pytest plugin (pyproject's pytest11 entry point); this line
loads it from a bare checkout too, and is a no-op when the entry point already did.
"""

import pytest

pytest.register_assert_rewrite("fixtures")

pytest_plugins = ["fixtures.plugin"]
