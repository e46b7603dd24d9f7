"""gpu-probe: measure every GPU layer once inside a pod (or on a host) and print one JSON document.

The core and the lower layers use the standard library only, so the probe also runs when mounted from a
ConfigMap into a stock image that has nothing but Python 3.8+; torch, transformers and nvidia-ml-py are
imported lazily by the layers that need them.
"""

from __future__ import annotations

PROBE_NAME = "gpu-probe"
__version__ = "0.1.0"
