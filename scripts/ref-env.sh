#!/usr/bin/env bash
# Builds the Python environment of reference implementations that make the golden files under
# tests/golden/: HF transformers (with torch), gguf, scikit-learn. Only needed to *regenerate*
# goldens; the tests read the committed outputs. Prints the venv's python path.
set -euo pipefail
DEPS=${AXBENCH_DEPS:-$HOME/.cache/axbench-deps}
VENV="$DEPS/ref-venv"
if [ ! -f "$VENV/.complete" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q torch==2.11.0 "transformers>=4.56,<5" "gguf>=0.17" scikit-learn numpy safetensors \
    sentencepiece protobuf pandas pyarrow polars
  touch "$VENV/.complete"
fi
# llama.cpp's tokenizer, the reference for GGUF byte-level BPE vocabularies
# (tests/golden/make_tokenizer_golden.py). Outside the guard so existing venvs get it; builds from source (minutes).
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 "$VENV/bin/pip" install -q llama-cpp-python >&2
fi
# accelerate: transformers refuses to load GGUF checkpoints without it (tests/golden/make_model_golden.py).
if ! "$VENV/bin/python" -c "import accelerate" 2>/dev/null; then
  "$VENV/bin/pip" install -q accelerate >&2
fi
# The Python `openai` client (serve/tests/server.rs drives the server with it) and llama-cpp-python's
# OpenAI server (benches/serve/bench_serve.py compares against it).
if ! "$VENV/bin/python" -c "import openai, uvicorn, fastapi, sse_starlette, starlette_context, pydantic_settings" 2>/dev/null; then
  "$VENV/bin/pip" install -q openai uvicorn fastapi sse-starlette starlette-context pydantic-settings >&2
fi
# peft: the LoRA reference (tests/golden/training/make_training_golden.py) and the training benchmark's HF + peft side
# (benches/training/bench_training.py).
if ! "$VENV/bin/python" -c "import peft" 2>/dev/null; then
  "$VENV/bin/pip" install -q peft >&2
fi
echo "$VENV/bin/python"
