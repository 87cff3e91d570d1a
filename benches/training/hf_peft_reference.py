"""HF transformers + peft side of benches/training/main.rs: the same batches, methods and optimizer on the same GGUF
(dequantized to f32 by transformers), forward + backward + AdamW step, tokens per second.

  OMP_WAIT_POLICY=PASSIVE $(scripts/ref-env.sh) benches/training/hf_peft_reference.py [threads] [steps]
"""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 4
torch.set_num_threads(threads)
PROMPT, RESPONSE, N, BATCH = 32, 96, 12, 6
LAYERS = [2, 4, 6, 9]
path = os.path.join(os.path.dirname(__file__), "../../.deps/models/gemma-3-270m-q4_k_m.gguf")

x = 42
rows = []
for _ in range(N):
    row = [2]
    for _ in range(1, PROMPT + RESPONSE):
        x = (1103515245 * x + 12345) % (1 << 31)
        row.append(100 + x % 200000)
    rows.append(row)
ids = torch.tensor(rows)
labels = ids.clone()
labels[:, :PROMPT] = -100

model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32, attn_implementation="sdpa")
model.train()
for p in model.parameters():
    p.requires_grad_(False)
# Same numerics as ours: no dropout anywhere (Gemma-3 has none; peft's lora_dropout set to 0 below).


def run(name, params, hook_setup=None, m=model):
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    handles = hook_setup() if hook_setup else []

    def step(k):
        b = slice((k % (N // BATCH)) * BATCH, (k % (N // BATCH)) * BATCH + BATCH)
        loss = m(input_ids=ids[b], labels=labels[b]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()

    step(0)  # warm-up
    t0 = time.perf_counter()
    for k in range(steps):
        step(k)
    secs = time.perf_counter() - t0
    for h in handles:
        h.remove()
    tokens = steps * BATCH * (PROMPT + RESPONSE)
    print(json.dumps({"runtime": f"HF transformers {__import__('transformers').__version__} + torch {torch.__version__}", "method": name,
                      "threads": threads, "steps": steps, "batch": BATCH, "seq_len": PROMPT + RESPONSE, "tokens": tokens,
                      "seconds": secs, "tokens_per_s": tokens / secs}), flush=True)


# SSV: h + w at layer 9's output, every position but BOS (a forward hook, as pyvene's addition intervention).
w = torch.full((640,), 0.01, requires_grad=True)
mask = torch.ones(BATCH, PROMPT + RESPONSE, 1)
mask[:, 0] = 0


def ssv_hooks():
    def add(module, inputs, output):
        if isinstance(output, tuple):
            return (output[0] + mask * w,) + tuple(output[1:])
        return output + mask * w
    return [model.model.layers[9].register_forward_hook(add)]


run("SSV", [w], ssv_hooks)

# LoReFT (pyreft's formula, R orthonormal through torch's orthogonal parametrization) at 4 layers on f5+l5.
from torch.nn.utils.parametrizations import orthogonal  # noqa: E402

pos = torch.zeros(BATCH, PROMPT + RESPONSE, 1)
pos[:, :5] = 1
pos[:, PROMPT - 5:PROMPT] = 1
loreft = []
for _ in LAYERS:
    rot = orthogonal(torch.nn.Linear(640, 4, bias=False))
    src = torch.nn.Linear(640, 4)
    loreft.append((rot, src))
lo_params = [p for rot, src in loreft for p in list(rot.parameters()) + list(src.parameters())]


def loreft_hooks():
    hs = []
    for layer, (rot, src) in zip(LAYERS, loreft):
        def edit(module, inputs, output, rot=rot, src=src):
            h = output[0] if isinstance(output, tuple) else output
            r = rot.weight  # [4, 640], orthonormal rows
            h2 = h + pos * ((src(h) - h @ r.T) @ r)
            return (h2,) + tuple(output[1:]) if isinstance(output, tuple) else h2
        hs.append(model.model.layers[layer].register_forward_hook(edit))
    return hs


run("LoReFT", lo_params, loreft_hooks)

# LoRA through peft.
from peft import LoraConfig, get_peft_model  # noqa: E402

pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, use_rslora=True, lora_dropout=0.0, target_modules=["o_proj"], layers_to_transform=LAYERS))
run("LoRA", [p for n, p in pm.named_parameters() if p.requires_grad], m=pm)
