#!/usr/bin/env bash
# The GPU benchmark presets as one prepared script (device machine: jax, optax, flax, chex and
# torch preinstalled, no network). Writes JSON and logs under $OUT (default: /tmp/optaxlr_gpu).
# Each step has its own time limit, so one slow step cannot lose the others' results.
set -u
OUT=${OUT:-/tmp/optaxlr_gpu}; mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PY:-python3}
nvidia-smi -L 2>&1 | tee "$OUT/machine.log"
$PY -c "import jax, optax, flax, torch; print('jax', jax.__version__, jax.devices(), 'optax', optax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, torch.cuda.is_available())" 2>&1 | tee -a "$OUT/machine.log"
step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  echo "=== $name (limit ${secs}s) $(date -u +%T)"
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1; echo "rc=$?" >> "$OUT/$name.log"
  tail -n 25 "$OUT/$name.log"
}
step gpu_small ${T1:-170} $PY benchmarks/sweep_bench.py --preset gpu --configs 1 8 64 256 --out "$OUT/gpu_small.json"
step gpu_large ${T2:-130} $PY benchmarks/sweep_bench.py --preset gpu --configs 1024 4096 --no-loops --out "$OUT/gpu_large.json"
step gpu_wide ${T3:-90} $PY benchmarks/sweep_bench.py --preset gpu-wide --out "$OUT/gpu_wide.json"
step cnn_gpu ${T4:-150} $PY benchmarks/cnn_bench.py --preset gpu --out "$OUT/cnn_gpu.json"
echo "=== done $(date -u +%T)"
