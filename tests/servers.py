"""Unreachable API servers on this machine, for the tests of the reachability check (unit and self-tests).

`refused_address`: a port bound and released again, so nothing listens (connection refused at once).
`black_hole_address`: a listener whose accept queue is full; Linux then drops further SYNs, exactly what a
firewall DROP does, so a connect waits for its whole timeout.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


def refused_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"https://127.0.0.1:{port}"


@contextlib.contextmanager
def black_hole_address() -> Iterator[str]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=1)
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        filler.close()
        listener.close()
