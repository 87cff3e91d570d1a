#!/usr/bin/env python3
"""Reference numbers for steering through a GGUF control vector in llama.cpp (llama-cpp-python).

For SmolLM2-135M-Instruct (GGUF Q4_1) and a short prompt, the steering direction is the unit-norm
input embedding of a target token (SmolLM2 ties embeddings, so adding it to the residual stream
raises that token's logit). For each layer in LAYERS and factor in FACTORS, the control vector
`direction.{layer} = factor * unit` is loaded the way llama.cpp's `common_control_vector_load`
does (tensor `direction.N` -> slot N-1 of a buffer that starts at layer 1) and applied with
`llama_set_adapter_cvec`; we record the next-token log-probabilities.

Usage:
  make_serve_golden.py MODEL.gguf OUT.json              write the golden file
  make_serve_golden.py MODEL.gguf --check CV.gguf       read a control-vector file written by
        axbench (layout checked with the `gguf` package), apply it in llama.cpp, print JSON

Run with the reference venv: `$(bash scripts/ref-env.sh) tests/golden/serve/make_serve_golden.py ...`
"""
import ctypes
import json
import sys

import gguf
import numpy as np
import llama_cpp

PROMPT = "My favourite food is"
TARGET = " cheese"
LAYERS = [5, 15, 28]
FACTORS = [0.0, 30.0, 100.0]
TOP = 5


def read_control_vector(path):
    """llama.cpp's common_control_vector_load_one checks, with the gguf package."""
    r = gguf.GGUFReader(path)
    fields = {k: f for k, f in r.fields.items()}
    arch = bytes(fields["general.architecture"].parts[-1]).decode()
    assert arch == "controlvector", arch
    hint = bytes(fields["controlvector.model_hint"].parts[-1]).decode()
    count = int(fields["controlvector.layer_count"].parts[-1][0])
    dirs = {}
    for t in r.tensors:
        prefix, _, idx = t.name.partition(".")
        assert prefix == "direction" and idx.isdigit() and int(idx) >= 1, t.name
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.tensor_type
        assert len(t.shape) == 1, t.shape
        dirs[int(idx)] = np.array(t.data, dtype=np.float32)
    assert count == len(dirs), (count, len(dirs))
    return hint, dirs


def load(model_path):
    return llama_cpp.Llama(model_path=model_path, n_ctx=256, n_threads=2, n_batch=64, logits_all=True, verbose=False)


def next_logprobs(llm, ids, dirs):
    n_embd = llm.n_embd()
    n_layer = llama_cpp.llama_model_n_layer(llm.model) if hasattr(llama_cpp, "llama_model_n_layer") else llm._model.n_layer()
    if dirs:
        buf = np.zeros(n_embd * (n_layer - 1), dtype=np.float32)
        for layer, d in dirs.items():
            buf[n_embd * (layer - 1): n_embd * layer] += d
        rc = llama_cpp.llama_set_adapter_cvec(
            llm.ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buf.size, n_embd, 1, n_layer)
    else:
        rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, None, 0, n_embd, -1, -1)
    assert rc == 0, rc
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[len(ids) - 1], dtype=np.float64)
    lp = logits - (np.log(np.exp(logits - logits.max()).sum()) + logits.max())
    return lp


def main():
    model = sys.argv[1]
    llm = load(model)
    ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=False)
    target = llm.tokenize(TARGET.encode(), add_bos=False, special=False)
    assert len(target) == 1, target
    target = target[0]
    if sys.argv[2] == "--check":
        hint, dirs = read_control_vector(sys.argv[3])
        base = next_logprobs(llm, ids, None)
        steered = next_logprobs(llm, ids, dirs)
        print(json.dumps({"model_hint": hint, "layers": sorted(dirs), "prompt_ids": ids, "target": target,
                          "base_target_logprob": float(base[target]), "steered_target_logprob": float(steered[target]),
                          "steered_top": [int(i) for i in np.argsort(-steered)[:TOP]]}))
        return
    r = gguf.GGUFReader(model)
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    from gguf.quants import dequantize
    E = dequantize(emb.data, emb.tensor_type).reshape(-1, llm.n_embd())
    unit = E[target].astype(np.float64)
    unit = (unit / np.linalg.norm(unit)).astype(np.float32)
    cases = []
    for layer in LAYERS:
        for f in FACTORS:
            lp = next_logprobs(llm, ids, {layer: unit * f} if f else None)
            top = np.argsort(-lp)[:TOP]
            cases.append({"layer": layer, "factor": f, "target_logprob": float(lp[target]),
                          "top": [[int(i), float(lp[i])] for i in top]})
    out = {"model": "smollm2-135m-instruct-q4_1.gguf", "llama_cpp_python": llama_cpp.__version__, "prompt": PROMPT,
           "prompt_ids": ids, "target": TARGET, "target_id": target, "unit_direction_norm_check": float(np.linalg.norm(unit)),
           "cases": cases}
    with open(sys.argv[2], "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
