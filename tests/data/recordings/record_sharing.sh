#!/usr/bin/env bash
# Records what the sharing/isolation scenarios' probes see on the real GPU host, into the folder $1.
# Run from the repo root: PYTHONPATH=container bash tests/data/recordings/record_sharing.sh "$OUT/sharing"
# Bounded: every step has a timeout; the whole script stays under ~100 s on the H100 host.
#   timeslice-exclusive.log       one probe alone (driver,gpu_perf)
#   timeslice-4-0.log .. -3.log   4 probes on the one GPU, started together at one shared instant by
#                                 fixtures/sync_start.py (imports and CUDA context first, then the barrier),
#                                 which is what time-slicing does: several processes time-share one GPU
#   isolation-void.log            NVIDIA_VISIBLE_DEVICES=void (on a bare host only the container runtime
#                                 reads it, so this shows what the variable alone does NOT hide)
#   isolation-nocuda.log          CUDA_VISIBLE_DEVICES="" (CUDA hides the GPU; NVML/nvidia-smi still see it)
#   mps-status.txt, mps.log       whether nvidia-cuda-mps-control could start; a probe as an MPS client
#                                 with CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50
#   mps-limit.log                 fixtures/mps_check.py as an MPS client with CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=4G
#                                 (only this part, plus a run without MPS: record_mps_limit.sh)
#   timings.txt, versions.txt
set -u
dir="${1:?usage: record_sharing.sh OUTPUT_DIR}"
mkdir -p "$dir"
export PYTHONPATH="${PYTHONPATH:-container}" PYTHONUNBUFFERED=1
probe=(python3 -m gpu_probe --json)
t0="$EPOCHREALTIME"
stamp() { awk -v n="$1" -v r="$2" -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%s rc=%s at_s=%.2f\n", n, r, b - a }' >> "$dir/timings.txt"; }
{
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"; echo "hostname: $(hostname)"; echo "uname: $(uname -a)"
  echo "python3: $(command -v python3) $(python3 --version 2>&1)"
  nvidia-smi --query-gpu=name,uuid,driver_version,mig.mode.current,compute_mode --format=csv 2>&1
} > "$dir/versions.txt"

# (a) exclusive
timeout 60 "${probe[@]}" --layers driver,gpu_perf --perf-seconds 4 > "$dir/timeslice-exclusive.log" 2>&1; stamp exclusive $?

# (b) 4 concurrent probes, one shared start instant (mid-second, so started_at agrees at 1 s resolution)
start_at=$(python3 -c 'import time; print(int(time.time()) + 20.5)')
pids=()
for i in 0 1 2 3; do
  GPU_ACCEPTANCE_START_AT="$start_at" timeout 60 python3 fixtures/sync_start.py --json --layers driver,gpu_perf --perf-seconds 4 \
    > "$dir/timeslice-4-$i.log" 2>&1 &
  pids+=($!)
done
for i in 0 1 2 3; do wait "${pids[$i]}"; stamp "timeslice-4-$i" $?; done

# (c) isolation as a process sees it
NVIDIA_VISIBLE_DEVICES=void timeout 60 "${probe[@]}" --layers driver,nvidia_smi,torch_cuda \
  > "$dir/isolation-void.log" 2>&1; stamp isolation-void $?
CUDA_VISIBLE_DEVICES="" timeout 60 "${probe[@]}" --layers driver,nvidia_smi,torch_cuda \
  > "$dir/isolation-nocuda.log" 2>&1; stamp isolation-nocuda $?

# (d) MPS, if the host lets us start its control daemon (private pipe/log dirs, always shut down)
export CUDA_MPS_PIPE_DIRECTORY="$dir/.mps-pipe" CUDA_MPS_LOG_DIRECTORY="$dir/.mps-log"
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
{
  echo "nvidia-cuda-mps-control: $(command -v nvidia-cuda-mps-control || echo 'not found')"
  if command -v nvidia-cuda-mps-control > /dev/null; then
    timeout 10 nvidia-cuda-mps-control -d; echo "start rc=$?"
    sleep 1
    echo "server list: $(echo get_server_list | timeout 5 nvidia-cuda-mps-control 2>&1)"
  fi
} > "$dir/mps-status.txt" 2>&1
if grep -q "start rc=0" "$dir/mps-status.txt"; then
  CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50 timeout 60 "${probe[@]}" --layers driver,torch_cuda,gpu_perf --perf-seconds 4 \
    > "$dir/mps.log" 2>&1; echo "probe rc=$?" >> "$dir/mps-status.txt"
  CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=4G CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50 timeout 60 python3 fixtures/mps_check.py \
    > "$dir/mps-limit.log" 2>&1; echo "mps_check rc=$?" >> "$dir/mps-status.txt"
  echo "server list after: $(echo get_server_list | timeout 5 nvidia-cuda-mps-control 2>&1)" >> "$dir/mps-status.txt"
  echo quit | timeout 10 nvidia-cuda-mps-control; echo "quit rc=$?" >> "$dir/mps-status.txt"
  cat "$CUDA_MPS_LOG_DIRECTORY"/control.log >> "$dir/mps-status.txt" 2>/dev/null
else
  echo "MPS could not start: no MPS client run" >> "$dir/mps-status.txt"
fi
rm -rf "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
stamp mps 0
cat "$dir/timings.txt"
