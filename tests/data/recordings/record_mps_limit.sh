#!/usr/bin/env bash
# Records only the MPS memory-limit check (fixtures/mps_check.py) on the real GPU host, into the folder $1.
# Run from the repo root: bash tests/data/recordings/record_mps_limit.sh "$OUT/mps"
# Bounded: every step has a timeout; the whole script stays under ~40 s on the H100 host.
#   mps-limit.log            mps_check.py as an MPS client (control daemon started with private pipe/log
#                            dirs), CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=4G CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50:
#                            allocations within 4 GiB, then one taking the client 1 GiB past it
#   mps-limit-nodaemon.log   the same with no control daemon (a plain process, the variables set): shows that
#                            the variable alone limits nothing without MPS
#   mps-limit-status.txt     daemon start/quit, server list, the control daemon's log; timings
set -u
dir="${1:?usage: record_mps_limit.sh OUTPUT_DIR}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
export PYTHONUNBUFFERED=1
limits=(CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=4G CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50)
check=(timeout 30 python3 fixtures/mps_check.py)
status="$dir/mps-limit-status.txt"
t0="$EPOCHREALTIME"
stamp() { awk -v n="$1" -v r="$2" -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%s rc=%s at_s=%.2f\n", n, r, b - a }' >> "$status"; }
{
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"; echo "hostname: $(hostname)"
  echo "python3: $(command -v python3) $(python3 --version 2>&1)"
  nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,compute_mode --format=csv 2>&1
  echo "nvidia-cuda-mps-control: $(command -v nvidia-cuda-mps-control || echo 'not found')"
} > "$status"

# Without MPS first (an empty pipe directory: no control daemon to connect to), before any daemon exists.
mkdir -p "$dir/.no-mps"
env CUDA_MPS_PIPE_DIRECTORY="$dir/.no-mps" "${limits[@]}" "${check[@]}" > "$dir/mps-limit-nodaemon.log" 2>&1
stamp nodaemon $?
rm -rf "$dir/.no-mps"

pipe="$dir/.mps-pipe" logs="$dir/.mps-log"
mkdir -p "$pipe" "$logs"
export CUDA_MPS_PIPE_DIRECTORY="$pipe" CUDA_MPS_LOG_DIRECTORY="$logs"
timeout 10 nvidia-cuda-mps-control -d; rc=$?; echo "start rc=$rc" >> "$status"
if [ "$rc" = 0 ]; then
  sleep 1
  env "${limits[@]}" "${check[@]}" > "$dir/mps-limit.log" 2>&1; stamp mps-client $?
  echo "server list after: $(echo get_server_list | timeout 5 nvidia-cuda-mps-control 2>&1)" >> "$status"
  echo quit | timeout 10 nvidia-cuda-mps-control; echo "quit rc=$?" >> "$status"
  sleep 1
else
  echo "MPS could not start: no MPS client run (mps-limit.log not written)" >> "$status"
fi
cat "$logs"/control.log >> "$status" 2>/dev/null
unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
rm -rf "$pipe" "$logs"
stamp done 0
cat "$status"
