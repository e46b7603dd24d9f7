#!/usr/bin/env bash
# The probe's speed and stability on the GPU host, old vs new, in one sitting (bench/probe_speed.py does it).
# Usage, from the repo root, with the old probe exported beside it (see /work/team/STATUS-probe.md):
#   mkdir -p .baseline && git archive 054a8a0 container/gpu_probe | tar -x -C .baseline
#   bash bench/h100_probe.sh OUTDIR [extra probe_speed.py options, e.g. --runs 5 --floor-runs 2]
# Writes OUTDIR/probe-speed.json, OUTDIR/probe-speed.txt and OUTDIR/gpu.txt; prints progress on stderr.
# Always exits 0: it measures, it does not judge (the goals are printed beside the figures).
set -u
out_dir="${1:-${OUT:-$PWD/probe-speed}}"
shift || true
cd "$(dirname "$0")/.." || exit 0
mkdir -p "$out_dir"
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,uuid,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' 2>&1
  echo "nproc $(nproc)"
} > "$out_dir/gpu.txt" 2>&1
cat "$out_dir/gpu.txt" >&2
python3 bench/probe_speed.py --out "$out_dir" "$@" || echo "bench/probe_speed.py exited $?" >&2
exit 0
