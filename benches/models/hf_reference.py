#!/usr/bin/env python3
"""The same workloads as benches/models/main.rs, run by HF transformers (the reference the Rust
numbers are compared with, on the same machine and thread count).

Usage: OMP_WAIT_POLICY=PASSIVE $(bash scripts/ref-env.sh) benches/models/hf_reference.py [MODEL.gguf THREADS]
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workload import best, ids  # noqa: E402

import torch
from transformers import AutoModelForCausalLM

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, ".deps/models/gemma-3-270m-q4_k_m.gguf")
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
torch.set_num_threads(threads)
t = time.time()
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
print(f"model {path}, {threads} threads, f32, load {time.time() - t:.2f}s")


with torch.no_grad():
    p = torch.tensor(ids(1, 128, 1))
    s = best(3, lambda: model(input_ids=p, logits_to_keep=1))
    print(f"prefill            batch 1 x 128: {128 / s:8.1f} tok/s (logits for the last position)")
    s = best(3, lambda: model(input_ids=p))
    print(f"prefill            batch 1 x 128: {128 / s:8.1f} tok/s (all logits)")
    for batch in (1, 8):
        x = torch.tensor(ids(batch, 16, 2))
        mask = torch.ones_like(x)
        run = lambda n: best(2, lambda: model.generate(input_ids=x, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0))
        t1, t65 = run(1), run(65)
        print(f"decode             batch {batch}:       {64 * batch / (t65 - t1):8.1f} tok/s")
    x = torch.tensor(ids(8, 64, 3))
    n = 8 * 64
    full = best(3, lambda: model(input_ids=x))
    layers = model.model.layers
    model.model.layers = layers[:10]  # run layers 0..=9 only, no LM head
    early = best(3, lambda: model.model(input_ids=x))
    model.model.layers = layers
    print(f"activations L9     batch 8 x 64:  {n / early:8.1f} tok/s (stop after layer 9)")
    print(f"full forward       batch 8 x 64:  {n / full:8.1f} tok/s (all layers + logits)")
