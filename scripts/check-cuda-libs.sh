#!/usr/bin/env bash
# Proves, on any machine (no GPU needed), that every shared library libtorch's CUDA half needs
# resolves: the ones libtorch_cuda.so links (cuBLAS, cuDNN, cuSPARSE, cuFFT, cuFile, cuSPARSELt,
# NCCL, cuRAND, NVSHMEM) and the ones loaded later by name (libtorch_cuda_linalg.so and its
# cuSOLVER for LoReFT's QR, libcaffe2_nvrtc.so and NVRTC for fused kernels, cuDNN's engine
# libraries, nvJitLink). Only libcuda.so.1 may be missing: it is the GPU driver's, not a wheel's.
#
#   scripts/check-cuda-libs.sh [LIBTORCH]    (default: .deps/libtorch-2.11.0/torch)
#
# Exits 0 and prints one line per library when all resolve; exits 1 naming each missing
# dependency and the library that needs it (the fix is usually `scripts/setup.sh --cuda`).
set -euo pipefail
LIBTORCH=${1:-"$(cd "$(dirname "$0")/.." && pwd)/.deps/libtorch-2.11.0/torch"}
lib="$LIBTORCH/lib"
nv="$LIBTORCH/../nvidia"
[ -f "$lib/libtorch_cuda.so" ] || { echo "check-cuda-libs: no $lib/libtorch_cuda.so (is LIBTORCH a CUDA build?)" >&2; exit 1; }

targets=("$lib/libtorch_cuda.so" "$lib/libc10_cuda.so" "$lib/libtorch_nvshmem.so"
         "$lib/libtorch_cuda_linalg.so" "$lib/libcaffe2_nvrtc.so")
# Loaded by name at run time, so ldd of the above does not see them: they must exist and resolve.
lazy=(cu13/lib/libcusolver.so.12 cu13/lib/libnvrtc.so.13 cu13/lib/libnvJitLink.so.13
      cudnn/lib/libcudnn_ops.so.9 cudnn/lib/libcudnn_cnn.so.9 cudnn/lib/libcudnn_adv.so.9
      cudnn/lib/libcudnn_graph.so.9 cudnn/lib/libcudnn_engines_precompiled.so.9
      cudnn/lib/libcudnn_engines_runtime_compiled.so.9 cudnn/lib/libcudnn_heuristic.so.9)
bad=0
for l in "${lazy[@]}"; do
  if [ -f "$nv/$l" ]; then targets+=("$nv/$l"); else echo "MISSING $nv/$l (loaded by name at run time)"; bad=1; fi
done
for t in "${targets[@]}"; do
  [ -f "$t" ] || { echo "MISSING $t"; bad=1; continue; }
  deps=$(ldd "$t")
  missing=$(awk '/not found/ && $1 != "libcuda.so.1" {print $1}' <<<"$deps" | sort -u | tr '\n' ' ')
  if [ -n "$missing" ]; then
    echo "UNRESOLVED $(basename "$t"): $missing"; bad=1
  else
    echo "ok $(basename "$t") ($(grep -c '=> /' <<<"$deps") libraries)"
  fi
done
if [ "$bad" = 1 ]; then
  echo "check-cuda-libs: some CUDA libraries do not resolve; run scripts/setup.sh --cuda" >&2
  exit 1
fi
echo "check-cuda-libs: every CUDA library libtorch needs resolves (libcuda.so.1 comes with the driver)"
