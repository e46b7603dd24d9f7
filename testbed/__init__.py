"""The testbed: a real Kubernetes control plane with SIMULATED GPU nodes (kwok), and a real MinIO.

`python -m testbed up|down|status|env`; from Python: `testbed.up()`, `testbed.down()`, `testbed.client_env()`.
See testbed/README.md for what is real and what is simulated.
"""

from testbed.errors import TestbedError
from testbed.lifecycle import Testbed, client_env, down, status, up

__all__ = ["Testbed", "TestbedError", "client_env", "down", "status", "up"]
