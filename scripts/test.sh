#!/usr/bin/env bash
# The project's test command (the README's second command; .ci/run calls it): installs what the
# tests need (libtorch, the embedded GGUF models) and runs the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec cargo test --workspace "$@"
