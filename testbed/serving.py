"""TESTBED ONLY: what the serving self-test needs to run the GPT-2 service on the real node (CPU, FAKE GPUs).

The service needs python3, torch and transformers. PyPI's Linux torch is the CUDA build (this project's
.venv: 5.6 GB of site-packages with the nvidia-* wheels, which `import torch` loads), too big to copy into
an image on every CI run. So, on the testbed only:
- the image is the probe image (this host's python3 and its standard library) plus the system libraries the
  venv's compiled modules load (libstdc++, libgomp's neighbours, libz...: ldd of every ELF file in
  site-packages, minus what lies inside it), a few MB more, built and imported in seconds;
- the venv's site-packages are mounted read-only from the host with a hostPath volume and put on PYTHONPATH.
A real cluster passes an image that holds torch and transformers (`--serving-image`, else `--image`; the
GPU host's torch image in testbed/scripts/gpuhost-session.sh), and no hostPath is ever used by the suite.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import sysconfig
from pathlib import Path
from typing import Any

from testbed import images, versions
from testbed.errors import TestbedError

MOUNT = "/opt/testbed-site-packages"


def site_packages() -> str:
    """The site-packages of the interpreter running this (the project's .venv in `make test`)."""
    return os.path.realpath(sysconfig.get_paths()["purelib"])


def system_libraries(site: str) -> list[str]:
    """The host libraries the ELF files under `site` load, except those inside it (~6 s on 394 files)."""
    files = [f for f in glob.glob(f"{site}/**/*.so*", recursive=True) if os.path.isfile(f)]
    return sorted(
        lib
        for lib in images.shared_libraries(files)
        if not os.path.realpath(lib).startswith(site + os.sep) and not images.is_driver_library(lib)
    )


def serving_image_spec(site: str) -> images.ImageSpec:
    """The probe image plus the system libraries of `site`'s compiled modules (not the modules)."""
    spec = images.probe_image_spec(extra_paths=system_libraries(site))
    return dataclasses.replace(spec, repository=f"{images.REGISTRY}/gpu-serving-host-python")


def import_serving_image(site: str | None = None) -> str:
    """Build (cached by content) and import the serving image into the running real node; its name."""
    from testbed.state import State

    state = State.load()
    if state is None or not state.real_node:
        raise TestbedError("no running real node: start the testbed with `python -m testbed up`")
    image = images.build_image(serving_image_spec(site or site_packages()), versions.cache_root() / "images")
    node = state.real_node
    images.import_images(Path(node["bin_dir"]) / "ctr", node["containerd_address"], [image])
    return image.name


def mount_site_packages(deployment: dict[str, Any], site: str | None = None) -> None:
    """Mount `site` read-only into the Deployment's server container and put it on PYTHONPATH."""
    spec = deployment["spec"]["template"]["spec"]
    path = site or site_packages()
    spec["volumes"].append({"name": "testbed-site-packages", "hostPath": {"path": path, "type": "Directory"}})
    container = spec["containers"][0]
    container["volumeMounts"].append({"name": "testbed-site-packages", "mountPath": MOUNT, "readOnly": True})
    for env in container["env"]:
        if env["name"] == "PYTHONPATH":
            env["value"] = f"{env['value']}:{MOUNT}"
