"""The one exception the testbed raises for things a person must fix (shown as a single clear line)."""


class TestbedError(RuntimeError):
    """Something the testbed cannot do, with the reason in the message."""

    __test__ = False  # not a pytest test class, despite the name
