#!/usr/bin/env bash
# The project's test command (the README's second command; .ci/run calls it): installs what the
# tests need (libtorch, the embedded GGUF models, the Python reference venv) and runs the whole
# workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
# Python peers some tests drive (the `openai` client, llama-cpp-python loading our control vectors,
# pandas/polars opening our Parquet); cached under $AXBENCH_DEPS like the rest.
bash scripts/ref-env.sh --tests >/dev/null
# A single-node Slurm cluster on loopback for tests/slurm.rs, where we may install it (root with
# apt, as on CI); the Slurm tests then must run rather than skip. Elsewhere they print why they skip.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  bash scripts/slurm-up.sh >/dev/null
  export AXBENCH_REQUIRE_SLURM=1
fi
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec cargo test --workspace "$@"
