#!/usr/bin/env bash
# The project's test command (the README's second command; .ci/run calls it): installs what the
# tests need (libtorch, the embedded GGUF models, the Python reference venv) and runs the whole
# workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
# Python peers some tests drive (the `openai` client, llama-cpp-python loading our control vectors,
# pandas/polars opening our Parquet); cached under $AXBENCH_DEPS like the rest.
bash scripts/ref-env.sh >/dev/null
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec cargo test --workspace "$@"
