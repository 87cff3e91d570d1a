#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a fixed time each (default 60 s), starting from the
# committed seeds in fuzz/seeds/<target>/ (copied into the working corpus fuzz/corpus/<target>/).
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 300 gguf   # 5 minutes, one target
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain (`rustup toolchain install
# nightly`); without one it falls back to RUSTC_BOOTSTRAP=1 on stable. Crashes land in
# fuzz/artifacts/<target>/ and make this script exit non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(pipeline_spec gguf safetensors)
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
# libtorch (safetensors target) is found through LIBTORCH from .cargo/config.toml; at run time too.
export LD_LIBRARY_PATH="$PWD/.deps/libtorch-2.11.0/torch/lib:${LD_LIBRARY_PATH:-}"
status=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  cp -n fuzz/seeds/"$t"/* "fuzz/corpus/$t/" 2>/dev/null || true
  echo "== $t: ${secs}s"
  # -rss_limit_mb: a lying header must not make us allocate what it claims.
  if ! (cd fuzz && "${fuzz[@]}" run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536); then
    echo "== $t: FAILED (see fuzz/artifacts/$t/)"
    status=1
  fi
done
exit $status
