#!/usr/bin/env bash
# The README's first command: installs libtorch and the embedded models (cached), builds the
# release binary and runs the demo pipeline on the embedded defaults. Extra arguments go to
# `axbench run` (e.g. `--set concepts.limit=4`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
cargo build --release --quiet
exec target/release/axbench run pipelines/demo.toml "$@"
