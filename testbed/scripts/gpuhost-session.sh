#!/bin/bash
# The whole issue-10 sequence on a GPU host without network, as the H100 runs of 2026-11-25 used it (see
# docs/h100-gpu-host-2026-11-25/): unpack the bundle, `up --gpu-host` with a small probe image, the suite,
# the torch probe image, the suite again with all 8 layers, the serving check (GPT-2 Deployment under load),
# on a multi-GPU host one pod with every GPU, time-slicing and the sharing checks, the time-to-verdict bench,
# `down`,
# `check-clean`. Every step has a share of a time budget, so a run cut short still leaves its results.
# Steps can be skipped for a session that adds one more: SMALL_RUN=0, FULL_RUN=0, SERVING=0, SHARING=0, BENCH=0;
# BENCH_REPEATS (default 3) sets the time-to-verdict bench's rounds.
#
# Before (on a machine with Go): python -m testbed bundle --out .gpuhost/bundle; the suite's wheels in
# .gpuhost/wheels (the project's own: pip wheel --no-deps -w .gpuhost/wheels .; its dependencies for the
# host's Python: see testbed/README.md, "A real GPU host").
# Usage, in the repository copy on the GPU host: bash testbed/scripts/gpuhost-session.sh BUDGET_S OUTDIR PART...
set -u
export PYTHONUNBUFFERED=1
B=${1:?budget seconds}; R=${2:?output dir}; shift 2; PARTS=("$@")
T0=$(date +%s); W=$PWD; TMP=/tmp/kga-out
left() { echo $(( B - ($(date +%s) - T0) )); }
el() { echo "[gpuhost +$(( $(date +%s) - T0 ))s] $*" | tee -a "$R/steps.txt"; }
pack() { tar czf "$R/$1.tgz" -C "$TMP" "$1" 2>/dev/null; }
mkdir -p "$R" "$TMP"/{small,full,serving,shared,rest}
# With bytecode (pip's default): the GPU host sets PYTHONDONTWRITEBYTECODE=1, so without .pyc files every
# pytest start compiled the kubernetes client again (its import 1.8-1.9 s instead of 0.45-0.54 s, `pytest --co`
# 4.6-4.8 s instead of 2.3-2.4 s on the H100 host, 2026-11-26), time a user's pip install never pays.
rm -rf /tmp/site  # a fresh target: pip leaves what it finds there (and its missing .pyc files) in place
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpuhost/wheels/*.whl
export PYTHONPATH=/tmp/site:$W
el "wheels in; $(nvidia-smi -L | tr '\n' ' ')"
el "host: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tr '\n' ' '); MPS control: $(command -v nvidia-cuda-mps-control || echo absent); $(nproc) cores"
python3 -m testbed unpack-bundle "${PARTS[@]}" --bin-dir /opt/kga/bin 2>&1 | tail -1
TP=$(python3 -c 'import sys, torch; print(sys.executable)'); SP=/usr/bin/python3
el "torch interpreter $TP; small image from $SP"
timeout $(( $(left) * 2 / 10 )) python3 -m testbed up --gpu-host --bin-dir /opt/kga/bin --python $SP > "$R/up.log" 2>&1
UP=$?; el "up rc=$UP"; tail -3 "$R/up.log"
if [ $UP -ne 0 ]; then  # nothing below can pass without the cluster: spend no more of the budget
  el "up failed: $(grep -E 'testbed: |error' "$R/up.log" | tail -2 | tr '\n' ' ')"
else
eval "$(python3 -m testbed env)"
SMALL=$(python3 -c 'from testbed import lifecycle as l; s,_=l.status(); print(l.testbed_of(s, False).probe_image)')
setsid nohup python3 -m testbed gpu-host-image --python "$TP" > "$R/image.log" 2>&1 < /dev/null &
# The suite from wheels: -P and importlib mode keep the checkout's package from shadowing the installed one.
PYT="python3 -P -m pytest -p no:cacheprovider --import-mode=importlib -o pythonpath=container --target k8s --model=random-gpt2-small"
if [ "${SMALL_RUN:-1}" = 1 ]; then  # SMALL_RUN=0 / FULL_RUN=0: skip those steps (a session for one more step)
  timeout $(( $(left) / 4 )) $PYT -m gpu --image="$SMALL" --report-dir="$TMP/small" > "$TMP/small/pytest.txt" 2>&1
  el "small-image run rc=$? ($(tail -1 "$TMP/small/pytest.txt"))"; pack small
fi
while [ "$(left)" -gt 120 ] && pgrep -f "testbed gpu-host-image" > /dev/null; do sleep 1; done
BIG=$(grep '^k8s-gpu-acceptance.local' "$R/image.log" | tail -1)
el "torch image: ${BIG:-not ready}; $(grep -E 'probe image|imported' "$R/image.log" | tr '\n' ' ')"
K=/opt/kga/bin/kubectl
if [ -n "$BIG" ] && [ "${FULL_RUN:-1}" = 1 ]; then  # FULL_RUN=0: skip (SERVING/BENCH/SHARING still run)
  timeout $(( $(left) / 3 )) $PYT -m gpu --image="$BIG" --report-dir="$TMP/full" --keep > "$TMP/full/pytest.txt" 2>&1
  el "torch-image run rc=$? ($(tail -1 "$TMP/full/pytest.txt"))"
  for p in $($K get pods -A -l k8s-gpu-acceptance/role=probe -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{"\n"}{end}'); do
    $K logs -n "${p%/*}" "${p#*/}" > "$TMP/full/pod-${p#*/}.log" 2>&1
  done
  $K get nodes -o yaml > "$TMP/full/nodes.yaml" 2>&1
  # --keep kept the exhaustion holders running on every GPU: free them as a user would, or the next run
  # finds no free GPU (met on the 2-GPU host: "Insufficient nvidia.com/gpu" for --gpus=2).
  python3 -m k8s_gpu_acceptance.cleanup --all --delete > "$TMP/full/cleanup.txt" 2>&1
  el "kept objects deleted: rc=$? ($(tail -1 "$TMP/full/cleanup.txt"))"
  $K wait --for=delete pods -A -l app.kubernetes.io/managed-by=k8s-gpu-acceptance --timeout=60s > /dev/null 2>&1
  el "their pods gone: rc=$?"; pack full
fi
if [ -n "$BIG" ]; then
  if [ "${SERVING:-1}" = 1 ] && [ "$(left)" -gt 200 ]; then  # issue 14: GPT-2 Deployment under load; GPUs+1 replicas: one Pending
    mkdir -p "$TMP/serving"
    timeout 150 $PYT -m serving --image="$BIG" --report-dir="$TMP/serving" > "$TMP/serving/pytest.txt" 2>&1
    el "serving run rc=$? ($(tail -1 "$TMP/serving/pytest.txt")); $(grep -E 'serving: [0-9]+ client' "$TMP/serving/pytest.txt" | tr '\n' ' ')"
    pack serving
  fi
  NGPU=$(nvidia-smi -L | grep -c '^GPU ')
  if [ "$NGPU" -ge 2 ] && [ "$(left)" -gt 90 ]; then  # issue 16: one pod given every GPU of the node
    mkdir -p "$TMP/all-gpus"
    timeout $(( $(left) / 4 )) $PYT -m "gpu and not sharing and not exhaustion and not isolation and not distinct_gpus" \
      --gpus="$NGPU" --image="$BIG" --report-dir="$TMP/all-gpus" > "$TMP/all-gpus/pytest.txt" 2>&1
    el "--gpus=$NGPU run rc=$? ($(tail -1 "$TMP/all-gpus/pytest.txt"))"
    mkdir -p "$TMP/all-gpus/sweep"  # the fleet sweep's node row with each GPU's figures
    timeout 90 $PYT -m "gpu and not sharing and not exhaustion and not isolation and not distinct_gpus" \
      --all-nodes --gpus="$NGPU" --image="$BIG" --report-dir="$TMP/all-gpus/sweep" > "$TMP/all-gpus/sweep/pytest.txt" 2>&1
    el "--all-nodes --gpus=$NGPU sweep rc=$? ($(tail -1 "$TMP/all-gpus/sweep/pytest.txt"))"; pack all-gpus
  fi
  if [ "${SHARING:-1}" = 1 ] && [ "$(left)" -gt 150 ]; then  # SHARING=0: skip (already proven on this host)
    timeout 120 python3 -m testbed up --gpu-host --bin-dir /opt/kga/bin --python $SP --time-slicing 4 >> "$R/up.log" 2>&1
    el "time-slicing 4: rc=$?"
    timeout $(( $(left) - 40 )) $PYT -m sharing --image="$BIG" --report-dir="$TMP/shared" > "$TMP/shared/pytest.txt" 2>&1
    el "sharing run rc=$? ($(tail -1 "$TMP/shared/pytest.txt"))"; pack shared
  fi
fi
if [ -n "$BIG" ] && [ "${BENCH:-1}" = 1 ] && [ "$(left)" -gt 120 ]; then  # issue 13: time to verdict on a GPU node
  mkdir -p "$TMP/bench"
  timeout $(( $(left) - 45 )) python3 bench/bench_time_to_verdict.py --image "$BIG" --repeats "${BENCH_REPEATS:-3}" \
    --pytest-arg=--import-mode=importlib --pytest-arg=-o --pytest-arg=pythonpath=container \
    --model=random-gpt2-small > "$TMP/bench/time-to-verdict.txt" 2>&1
  el "time-to-verdict bench rc=$? ($(grep 'ratio' "$TMP/bench/time-to-verdict.txt"))"; pack bench
fi
fi
pkill -f "testbed gpu-host-image" 2>/dev/null
cp -r ~/.cache/k8s-gpu-acceptance/state/node/logs "$TMP/rest/node-logs" 2>/dev/null
timeout 30 python3 -m testbed down > "$TMP/rest/down.txt" 2>&1; el "down rc=$?"
python3 -m testbed check-clean > "$TMP/rest/check-clean.txt" 2>&1; el "check-clean rc=$?"
pack rest; el "done"
