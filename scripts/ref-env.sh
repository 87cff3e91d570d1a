#!/usr/bin/env bash
# The Python environment of reference implementations and peers. Prints the venv's python path.
#
#   bash scripts/ref-env.sh           everything: HF transformers with torch, gguf, scikit-learn, peft,
#                                     llama-cpp-python, ... (regenerating goldens under tests/golden/, benches/)
#   bash scripts/ref-env.sh --tests   only the peers the test suite drives: pandas/pyarrow/polars open our
#                                     Parquet, llama-cpp-python + gguf read our control vectors, the `openai`
#                                     client talks to our server. No torch: the full set is ~6 GB, which a CI
#                                     disk shared with the Rust build cannot spare.
#
# Both share one venv under $AXBENCH_DEPS, so `--tests` after a full install is a no-op.
set -euo pipefail
DEPS=${AXBENCH_DEPS:-$HOME/.cache/axbench-deps}
VENV="$DEPS/ref-venv"
MODE=full
[ "${1:-}" = "--tests" ] && MODE=tests
# The venv itself is the cache; pip's wheel cache would only double the disk used.
PIP=("$VENV/bin/pip" install -q --no-cache-dir)
# One retry: a dropped download or a transient OSError should not fail a CI run.
pip_install() { "${PIP[@]}" "$@" || { echo "pip install $* failed; retrying once" >&2; "${PIP[@]}" "$@"; }; }
has() { "$VENV/bin/python" -c "import $1" 2>/dev/null; }

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if ! has "pandas, pyarrow, polars, numpy, gguf"; then
  pip_install --upgrade pip >&2
  pip_install numpy pandas pyarrow polars "gguf>=0.17" >&2
fi
# llama.cpp (control vectors, tokenizer goldens); builds from source (minutes).
if ! has llama_cpp; then
  CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 pip_install llama-cpp-python >&2
fi
# The Python `openai` client (crates/serve/tests/server.rs drives the server with it) and llama-cpp-python's
# OpenAI server (benches/serve/bench_serve.py compares against it).
if ! has "openai, uvicorn, fastapi, sse_starlette, starlette_context, pydantic_settings"; then
  pip_install openai uvicorn fastapi sse-starlette starlette-context pydantic-settings >&2
fi
if [ "$MODE" = full ] && [ ! -f "$VENV/.complete" ]; then
  # accelerate: transformers refuses to load GGUF checkpoints without it (tests/golden/make_model_golden.py).
  # peft: the LoRA reference (tests/golden/training/) and the training benchmark's HF side.
  pip_install torch==2.11.0 "transformers>=4.56,<5" scikit-learn safetensors sentencepiece protobuf \
    accelerate peft >&2
  touch "$VENV/.complete"
fi
echo "$VENV/bin/python"
