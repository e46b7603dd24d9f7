#!/usr/bin/env bash
# Records the H100 probe runs and the raw captures the parser tests use. Run from the repo root on the GPU
# host (the lead's `device` tool runs it with $OUT set; elsewhere OUT defaults to ./h100-capture).
# Produces $OUT/capture.tar.gz holding: h100.log (warm run, stdout+stderr merged, = the pod log),
# cold.stdout/cold.stderr (first run, streams kept apart to prove stdout is pure JSON), tiny.log,
# hub-offline.log (the gpt2 layer's error path), stdlib-only.log (python3 -S: no site-packages, as in a stock image), nvidia-smi.txt, nvidia-smi-query.csv,
# nvidia-smi-query-nounits.csv, nvidia-smi-q.txt, proc-driver-version.txt, proc-gpu-information.txt,
# dev-nvidia.txt, nvidia-smi-busy.txt (a CUDA process alive), importtime.txt, versions.txt, pip-list.txt, timings.txt.
set -u
OUT="${OUT:-$PWD/h100-capture}"
dir="$OUT/capture"
mkdir -p "$dir"
export PYTHONPATH=container PYTHONUNBUFFERED=1
query="index,name,uuid,driver_version,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw,pstate,persistence_mode,mig.mode.current,compute_mode,pci.bus_id"

timed() {  # timed NAME CMD... : wall seconds of one command into timings.txt
  local name="$1"; shift
  local t0="$EPOCHREALTIME"
  "$@"
  local rc=$?
  awk -v n="$name" -v r="$rc" -v a="$t0" -v b="$EPOCHREALTIME" \
    'BEGIN { printf "%s rc=%s wall_s=%.2f\n", n, r, b - a }' >> "$dir/timings.txt"
}


nvidia-smi > "$dir/nvidia-smi.txt" 2>&1
nvidia-smi --query-gpu="$query" --format=csv > "$dir/nvidia-smi-query.csv" 2>&1
nvidia-smi --query-gpu="$query" --format=csv,noheader,nounits > "$dir/nvidia-smi-query-nounits.csv" 2>&1
nvidia-smi -q > "$dir/nvidia-smi-q.txt" 2>&1
cat /proc/driver/nvidia/version > "$dir/proc-driver-version.txt" 2>&1
cat /proc/driver/nvidia/gpus/*/information > "$dir/proc-gpu-information.txt" 2>&1
ls -la /dev/nvidia* > "$dir/dev-nvidia.txt" 2>&1

model=random-gpt2-small
timed cold timeout 300 python3 -m gpu_probe --json --model "$model" > "$dir/cold.stdout" 2> "$dir/cold.stderr"
{
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "hostname: $(hostname)"
  echo "uname: $(uname -a)"
  echo "python3: $(command -v python3) $(python3 --version 2>&1)"
  python3 -c 'import torch, transformers, tokenizers, pynvml; print("torch", torch.__version__, "cuda", torch.version.cuda); print("transformers", transformers.__version__); print("tokenizers", tokenizers.__version__); print("nvidia-ml-py", getattr(pynvml, "__version__", "?"))' 2>&1
  nvidia-smi --version 2>&1
  echo "nproc: $(nproc)"
} > "$dir/versions.txt"
python3 -m pip list > "$dir/pip-list.txt" 2>&1
timed warm timeout 120 python3 -m gpu_probe --json --model "$model" > "$dir/h100.log" 2>&1
timed warm-tiny timeout 120 python3 -m gpu_probe --json --model tiny-random-gpt2 > "$dir/tiny.log" 2>&1
HF_HUB_OFFLINE=1 timeout 120 python3 -m gpu_probe --json --layers gpt2 --model openai-community/gpt2 \
  > "$dir/hub-offline.log" 2>&1
python3 -X importtime -c 'import torch; from transformers import GPT2LMHeadModel' 2> "$dir/importtime.txt"
python3 -c 'import subprocess, torch; x = torch.ones(1, device="cuda"); print(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)' > "$dir/nvidia-smi-busy.txt" 2>&1
timed stdlib-only python3 -S -m gpu_probe --json --layers driver,nvidia_smi,torch_cuda > "$dir/stdlib-only.log" 2>&1
python3 -c 'import json,sys; json.loads(open(sys.argv[1]).read()); print("cold.stdout is pure JSON")' \
  "$dir/cold.stdout" >> "$dir/timings.txt" 2>&1
cat "$dir/timings.txt"
tar -czf "$OUT/capture.tar.gz" -C "$OUT" capture && rm -rf "$dir"
