#!/usr/bin/env bash
# Side by side on one GGUF and thread count: our runtime (benches/models/main.rs), llama.cpp
# (llama-cpp-python) and HF transformers, run back to back so they see the same machine load.
#   OMP_WAIT_POLICY=PASSIVE benches/models/compare.sh [MODEL.gguf] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=$(realpath "${1:-.deps/models/gemma-3-270m-q4_k_m.gguf}")
THREADS=${2:-2}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
PY=$(bash scripts/ref-env.sh)
cargo bench -q -p axbench-models --bench models --no-run 2>/dev/null
echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== axbench-models (tch, f32)"
cargo bench -q -p axbench-models --bench models -- "$MODEL" "$THREADS" 2>/dev/null
echo "== llama.cpp (llama-cpp-python)"
"$PY" benches/models/llama_cpp_reference.py "$MODEL" "$THREADS" 2>/dev/null
echo "== HF transformers (f32)"
"$PY" benches/models/hf_reference.py "$MODEL" "$THREADS" 2>/dev/null
echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg)"
