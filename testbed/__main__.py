"""`python -m testbed up | down | status | env | build | check-clean | bundle | unpack-bundle`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from testbed import argo, build, gpuhost, hostcheck, lifecycle, versions
from testbed.errors import TestbedError


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; a TestbedError becomes one clear line and exit code 1."""
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="build if needed, start (or reuse) the testbed")
    p_up.add_argument(
        "--gpu-nodes",
        type=int,
        metavar="N",
        help="N identical 1-GPU nodes gpu-node-1..N instead of the single gpu-node-1",
    )
    p_up.add_argument(
        "--gpu-host",
        action="store_true",
        help="on a host with an NVIDIA driver: a single-node cluster on this host's GPUs (real kubelet, "
        "containerd, NVIDIA device plugin with CDI); no simulated nodes, no MinIO",
    )
    p_up.add_argument(
        "--bin-dir",
        type=Path,
        help="--gpu-host: the unpacked bundle (default: the binaries built here, when Go is available)",
    )
    p_up.add_argument(
        "--python",
        default=sys.executable,
        help="--gpu-host: the interpreter with torch + transformers for the probe image (default: this one)",
    )
    p_up.add_argument(
        "--time-slicing",
        type=int,
        default=1,
        metavar="N",
        help="--gpu-host: N nvidia.com/gpu per physical GPU by the device plugin's time-slicing (1: off)",
    )
    p_up.add_argument(
        "--argo",
        action="store_true",
        help="also run Argo Workflows v3.7.6 (controller built from its Go module, ~13.5 min cold; CRDs, "
        "executor image on the real node); opt-in, `down` stops it",
    )
    p_bundle = sub.add_parser("bundle", help="pack every binary a GPU host needs into parts that travel")
    p_bundle.add_argument("--out", type=Path, required=True, help="directory for part-1, part-2, ...")
    p_bundle.add_argument("--max-part-mib", type=float, default=58.0, help="largest part (58)")
    p_image = sub.add_parser(
        "gpu-host-image", help="--gpu-host: build the probe image of another interpreter into the node"
    )
    p_image.add_argument("--python", required=True, help="the interpreter (its venv or site-packages)")
    p_unpack = sub.add_parser("unpack-bundle", help="on the GPU host: unpack the parts into a bin dir")
    p_unpack.add_argument("parts", type=Path, nargs="+", help="the part directories")
    p_unpack.add_argument("--bin-dir", type=Path, required=True)
    sub.add_parser("down", help="stop exactly what `up` started and remove its state")
    sub.add_parser("status", help="say what runs")
    sub.add_parser("env", help="print shell exports: KUBECONFIG and the AWS_* variables for MinIO")
    p_build = sub.add_parser("build", help="only build (or verify) the cached binaries")
    p_build.add_argument("--argo", action="store_true", help="build (or verify) only Argo's binaries")
    sub.add_parser(
        "check-clean",
        help="after `down`: list what the testbed left on this host, compared with before `up`",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "up" and args.gpu_host:
            lifecycle.up(gpu_host=gpu_host_options(args), argo=args.argo)
        elif args.command == "up":
            lifecycle.up(args.gpu_nodes, argo=args.argo)
        elif args.command == "bundle":
            build.ensure_built()
            gpuhost.ensure_nvidia_built()
            gpuhost.make_bundle(args.out, args.max_part_mib)
        elif args.command == "gpu-host-image":
            print(gpuhost.add_probe_image(args.python))
        elif args.command == "unpack-bundle":
            gpuhost.unpack(args.parts, args.bin_dir)
        elif args.command == "down":
            lifecycle.down()
        elif args.command == "env":
            for key, value in lifecycle.client_env().items():
                print(f"export {key}={shlex.quote(value)}")
        elif args.command == "build" and args.argo:
            argo.ensure_argo_built()
        elif args.command == "build":
            build.ensure_built()
        elif args.command == "check-clean":
            return check_clean()
        else:
            return print_status()
    except TestbedError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 1
    return 0


def gpu_host_options(args: argparse.Namespace) -> gpuhost.GpuHost:
    """--gpu-host's options; without --bin-dir the binaries are built here (needs Go) and merged."""
    if args.time_slicing < 1:
        raise TestbedError(f"--time-slicing must be at least 1, got {args.time_slicing}")
    bindir = args.bin_dir
    if bindir is None:
        bindir = gpuhost.merged_bin_dir(build.ensure_built(), gpuhost.ensure_nvidia_built())
    return gpuhost.GpuHost(
        bin_dir=str(bindir.resolve()),
        python=args.python,
        time_slicing=args.time_slicing,
        node_name=gpuhost.node_name(),
    )


def check_clean() -> int:
    """Exit 0 when nothing of the testbed is left, 1 listing what is, 3 while it is still up."""
    if lifecycle.status()[0] is not None:
        print("testbed: still up; run `python -m testbed down` first")
        return 3
    before = hostcheck.load_baseline()
    if before is None:
        print("testbed: no baseline: `up` never started anything here, so nothing can be left")
        return 0
    left = hostcheck.differences(before, hostcheck.snapshot())
    for item in left:
        print(f"  left behind: {item}")
    print(f"testbed: {len(left)} thing(s) left behind" if left else "testbed: nothing left behind")
    return 1 if left else 0


def print_status() -> int:
    """Exit 0 when everything runs, 3 when nothing is up, 1 when some part is down."""
    state, checks = lifecycle.status()
    if state is None:
        print("testbed: not running")
        return 3
    print(
        f"testbed: cluster {state.cluster_name}, {len(state.nodes)} nodes, binaries {versions.version_key()}"
    )
    print(f"  KUBECONFIG={state.kubeconfig}")
    print(f"  S3 endpoint {state.s3_endpoint}")
    for name, ok in checks.items():
        print(f"  {'running' if ok else 'DOWN   '}  {name}")
    running = lifecycle.testbed_of(state, started_here=False)
    if running.real_node:
        print(f"  real node {running.real_node}, probe image {running.probe_image}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
