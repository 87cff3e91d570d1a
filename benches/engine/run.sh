#!/usr/bin/env bash
# Engine benchmark: no-op `plan` and `run` on a synthetic AxBench-shaped DAG, and the same
# no-op check with DVC (`dvc status`) and Snakemake (`snakemake -n`) on an equivalent DAG.
#
#   bash benches/engine/run.sh [CONCEPTS] [CMP_CONCEPTS]
#
# CONCEPTS (default 500) sizes the axbench DAG (x 4 settings x 10 methods, 7 stages);
# CMP_CONCEPTS (default 50) sizes the DAG all three tools are compared on. Needs a built
# `target/release/axbench` (or AXBENCH=path), the engine example
# (`cargo build -p axbench-engine --release --example bench_noop`), and DVC + Snakemake in
# /root/.cache/axbench-deps/bench-venv (python -m venv …; pip install dvc snakemake).
set -euo pipefail
cd "$(dirname "$0")/../.."
C=${1:-500}
CC=${2:-50}
AXBENCH=${AXBENCH:-target/release/axbench}
# The full binary (libtorch linked), which the launcher `axbench` execs for anything but a no-op.
AXBENCH_FULL=${AXBENCH_FULL:-target/release/axbench-full}
NOOP=${NOOP:-target/release/examples/bench_noop}
VENV=/root/.cache/axbench-deps/bench-venv
OUT=${OUT:-/tmp/axbench-bench}
export OMP_WAIT_POLICY=PASSIVE RUST_LOG=error
mkdir -p "$OUT"

# best of N wall-clock seconds of a command
best() { local n=$1; shift; local b=999999; for _ in $(seq "$n"); do local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); b=$(python3 -c "print(min($b, $e - $s))"); done; printf '%.3f' "$b"; }
peak() { /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -1 | awk '{printf "%.0f", $1/1024}'; }

echo "== axbench, $C concepts"
python3 benches/engine/gen.py "$OUT/full" --concepts "$C"
mkdir -p "$OUT/full/proj"
if [ ! -d "$OUT/full/proj/.axbench" ]; then
  s=$(date +%s.%N); $AXBENCH -C "$OUT/full/proj" run "$OUT/full/axbench.toml" -j 16 >/dev/null; e=$(date +%s.%N)
  echo "first run (computes every node): $(python3 -c "print(round($e-$s,1))") s"
fi
echo "startup (axbench-full --version, libtorch static init): $(best 3 $AXBENCH_FULL --version) s"
echo "no-op plan: $(best 3 $AXBENCH -C "$OUT/full/proj" plan "$OUT/full/axbench.toml") s, peak $(peak $AXBENCH -C "$OUT/full/proj" plan "$OUT/full/axbench.toml") MiB"
echo "no-op run:  $(best 3 $AXBENCH -C "$OUT/full/proj" run "$OUT/full/axbench.toml") s, peak $(peak $AXBENCH -C "$OUT/full/proj" run "$OUT/full/axbench.toml") MiB"
echo "no-op plan through the full binary (no launcher): $(best 3 $AXBENCH_FULL -C "$OUT/full/proj" plan "$OUT/full/axbench.toml") s"
[ -x "$NOOP" ] && { echo "engine only (in-process, no libtorch):"; $NOOP "$OUT/full/axbench.toml" "$OUT/full/proj"; }

echo "== comparison DAG, $CC concepts"
python3 benches/engine/gen.py "$OUT/cmp" --concepts "$CC"
mkdir -p "$OUT/cmp/proj"
[ -d "$OUT/cmp/proj/.axbench" ] || $AXBENCH -C "$OUT/cmp/proj" run "$OUT/cmp/axbench.toml" -j 16 >/dev/null
ax_plan=$(best 3 $AXBENCH -C "$OUT/cmp/proj" plan "$OUT/cmp/axbench.toml")
ax_run=$(best 3 $AXBENCH -C "$OUT/cmp/proj" run "$OUT/cmp/axbench.toml")
echo "axbench no-op plan: $ax_plan s; no-op run: $ax_run s"

(cd "$OUT/cmp/smk" && [ -d out ] || python3 "$OLDPWD/benches/engine/populate_outputs.py" . "$CC" 4 10)
smk=$(cd "$OUT/cmp/smk" && best 3 "$VENV/bin/snakemake" -n -c1 --quiet)
echo "snakemake -n: $smk s"

if [ ! -f "$OUT/cmp/dvc/dvc.lock" ]; then
  (cd "$OUT/cmp/dvc" && rm -rf .dvc && "$VENV/bin/dvc" init --no-scm -q && python3 "$OLDPWD/benches/engine/populate_outputs.py" . "$CC" 4 10 && "$VENV/bin/dvc" commit -f -q >/dev/null 2>&1)
fi
dvc=$(cd "$OUT/cmp/dvc" && best 3 "$VENV/bin/dvc" status -q)
echo "dvc status: $dvc s"
python3 -c "print(f'ratios (vs axbench no-op plan): snakemake {$smk/$ax_plan:.1f}x, dvc {$dvc/$ax_plan:.1f}x')"
