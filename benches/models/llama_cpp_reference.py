#!/usr/bin/env python3
"""The prefill and decode workloads of benches/models/main.rs, run by llama.cpp through
llama-cpp-python on the same GGUF and thread count. llama.cpp computes on the quantized weights
(Q4_K/Q6_K x Q8_K dot products), where we and HF transformers dequantize to f32 first.

Same token ids as main.rs and hf_reference.py (the xorshift below). Workloads:
  prefill  batch 1 x 128 tokens, logits for the last position only (n_batch 512: one ubatch)
  decode   batch 1, greedy, 16-token prompt; rate from 65 minus 1 new tokens (as main.rs)
Batch-8 decoding needs llama.cpp's multi-sequence batch API, which llama-cpp-python's Llama
class does not expose; it is left out.

Usage: OMP_WAIT_POLICY=PASSIVE $(bash scripts/ref-env.sh) benches/models/llama_cpp_reference.py [MODEL.gguf THREADS]
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workload import best, ids  # noqa: E402

import llama_cpp
from llama_cpp import Llama

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, ".deps/models/gemma-3-270m-q4_k_m.gguf")
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
t = time.time()
llm = Llama(model_path=path, n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads,
            logits_all=False, verbose=False)
print(f"model {path}, {threads} threads, llama-cpp-python {llama_cpp.__version__}, load {time.time() - t:.2f}s")


def prefill(p):
    llm.reset()  # back to position 0: eval overwrites the cache from the start
    llm.eval(p)


def decode(p, n):
    llm.reset()
    out = []
    for tok in llm.generate(p, temp=0.0, top_k=1, reset=True):
        out.append(tok)
        if len(out) == n:
            break
    assert len(out) == n


p = ids(1, 128, 1)[0]
s = best(3, lambda: prefill(p))
print(f"prefill            batch 1 x 128: {128 / s:8.1f} tok/s (logits for the last position)")
x = ids(1, 16, 2)[0]
t1 = best(2, lambda: decode(x, 1))
t65 = best(2, lambda: decode(x, 65))
print(f"decode             batch 1:       {64 / (t65 - t1):8.1f} tok/s")
