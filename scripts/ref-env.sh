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
echo "$VENV/bin/python"
