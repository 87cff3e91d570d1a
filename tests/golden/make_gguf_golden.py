#!/usr/bin/env python3
"""Golden files for models/src/gguf.rs and models/src/quant.rs, made with the `gguf` Python package
(llama.cpp's gguf-py): the reference reader and dequantizer.

Outputs under tests/golden/gguf/:
  <model>.json          header facts, hyperparameters, and per quantized tensor (a few per ggml type):
                        torch shape, sum / abs-sum / sum of squares (float64) and value slices at
                        fixed flat indices of gguf.quants.dequantize(...).
  synthetic/<TYPE>.in   random blocks of every supported ggml type (scales kept finite),
  synthetic/<TYPE>.f32  their dequantization by gguf-py, little-endian f32. gguf-py has no Q8_K
                        dequantizer: for Q8_K the reference is ggml's dequantize_row_q8_K written
                        in numpy below (d * qs, d a full f32).

Run: $(bash scripts/ref-env.sh) tests/golden/make_gguf_golden.py [models_dir] [--synthetic-only]
"""
import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "golden" / "gguf"
ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
MODELS = Path(ARGS[0]) if ARGS else ROOT / ".deps" / "models"
FILES = ["gemma-3-270m-q4_k_m.gguf", "smollm2-135m-instruct-q4_1.gguf"]
PER_TYPE = 3  # tensors checked per ggml type and file


def field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    v = f.contents()
    return v.item() if hasattr(v, "item") else v


def sample_indices(n):
    """Flat indices to record: the start, the end, and 48 spread in between (deterministic)."""
    rng = np.random.default_rng(n)
    mid = rng.integers(0, n, size=48)
    return sorted(set(list(range(min(16, n))) + list(range(max(0, n - 8), n)) + [int(i) for i in mid]))


def describe_tensor(t):
    x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    shape = [int(d) for d in reversed(t.shape)]  # gguf-py's t.shape is ggml order (ne)
    flat = x.reshape(-1)
    assert flat.size == int(np.prod(shape)), (t.name, x.shape, shape)
    idx = sample_indices(flat.size)
    f64 = flat.astype(np.float64)
    return {
        "name": t.name,
        "type": t.tensor_type.name,
        "shape": shape,
        "sum": float(f64.sum()),
        "abs_sum": float(np.abs(f64).sum()),
        "sq_sum": float((f64 * f64).sum()),
        "indices": idx,
        "values": [float(flat[i]) for i in idx],
    }


def model_golden(path):
    r = gguf.GGUFReader(path)
    arch = field(r, "general.architecture")
    by_type = {}
    for t in r.tensors:
        by_type.setdefault(t.tensor_type.name, []).append(t)
    chosen = []
    for ty, ts in sorted(by_type.items()):
        picks = {0, len(ts) // 2, len(ts) - 1}
        # Always include the embedding: the biggest tensor and the one the loader reads first.
        chosen += [ts[i] for i in sorted(picks)][:PER_TYPE]
        chosen += [t for t in ts if t.name == "token_embd.weight" and t not in chosen]
    hp = {}
    for k in ["block_count", "embedding_length", "feed_forward_length", "attention.head_count",
              "attention.head_count_kv", "context_length", "rope.freq_base", "rope.dimension_count",
              "attention.layer_norm_rms_epsilon", "attention.key_length", "attention.value_length",
              "attention.sliding_window", "vocab_size"]:
        hp[k] = field(r, f"{arch}.{k}")
    return {
        "file": path.name,
        "version": field(r, "GGUF.version"),
        "architecture": arch,
        "n_tensors": len(r.tensors),
        "n_metadata": len(r.fields) - 3,  # GGUF.version/tensor_count/kv_count are header fields
        "data_offset": int(r.data_offset),
        "types": {ty: len(ts) for ty, ts in sorted(by_type.items())},
        "hparams": hp,
        "tensor_dir": [{"name": t.name, "type": t.tensor_type.name,
                        "shape": [int(d) for d in reversed(t.shape)],
                        "abs_offset": int(t.data_offset)} for t in r.tensors],
        "tensors": [describe_tensor(t) for t in chosen],
    }


# Byte offsets of the f16 scale fields of each block type, kept finite in the synthetic blocks.
F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ4_NL": [0],
}


def dequantize_q8_k(raw):
    """ggml-quants.c dequantize_row_q8_K: block { float d; int8_t qs[256]; int16_t bsums[16]; }."""
    d = raw[:, :4].copy().view("<f4")  # [n_blocks, 1]
    qs = raw[:, 4:260].copy().view(np.int8).astype(np.float32)
    return (d * qs).reshape(-1)


def synthetic():
    d = OUT / "synthetic"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    for name in ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                 "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "Q8_K"]:
        qtype = T[name]
        block, size = GGML_QUANT_SIZES[qtype]
        n_blocks = 8 if block > 1 else 512
        raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
        if name == "F32":
            raw = rng.standard_normal(n_blocks).astype(np.float32).view(np.uint8).reshape(n_blocks, size)
        elif name in ("F16", "BF16"):
            raw[:, 1] &= 0xBF  # top exponent bit off: no inf/NaN
        elif name == "Q8_K":
            raw[:, :4] = rng.standard_normal(n_blocks).astype("<f4").view(np.uint8).reshape(n_blocks, 4)
        for off in F16_FIELDS.get(name, []):
            raw[:, off + 1] &= 0x3B  # small finite scales (|d| < 1)
        if name == "Q8_K":
            out = dequantize_q8_k(raw)
        else:
            out = gguf.quants.dequantize(raw.reshape(-1), qtype).astype(np.float32).reshape(-1)
        assert out.size == n_blocks * block
        assert np.isfinite(out).all(), name
        (d / f"{name}.in").write_bytes(raw.tobytes())
        (d / f"{name}.f32").write_bytes(out.astype("<f4").tobytes())
        print(name, n_blocks, "blocks")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    synthetic()
    if "--synthetic-only" in sys.argv:
        return
    for name in FILES:
        g = model_golden(MODELS / name)
        (OUT / (name.removesuffix(".gguf") + ".json")).write_text(json.dumps(g, indent=1) + "\n")
        print(name, g["types"], len(g["tensors"]), "tensors checked")


if __name__ == "__main__":
    main()
