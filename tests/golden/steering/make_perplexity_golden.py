#!/usr/bin/env python3
"""Reference perplexities for tests/steering.rs, from HF transformers, computed as AxBench computes a steered
generation's perplexity (axbench/models/model.py `predict_steer`, prompt.py `PromptSteering.predict_steer`):
logits of the unsteered model over the whole sequence, CrossEntropyLoss(reduction='none') of tokens 1.. given the
tokens before them, the mean over those tokens, exponentiated.

gemma-3-270m and SmolLM2-135M-Instruct are loaded from their GGUF files by transformers itself (float32). The token
ids are HF's tokenization of a few texts with special tokens (BOS for Gemma), stored beside the perplexity so the
Rust test checks the model math on the same ids and its own tokenizer separately.

Usage: $(bash scripts/ref-env.sh) tests/golden/steering/make_perplexity_golden.py
"""

import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEPS = os.path.join(ROOT, ".deps", "models")
OUT = os.path.join(ROOT, "tests", "golden", "steering", "perplexity.json")

torch.set_num_threads(2)

TEXTS = [
    "user\nWrite a short poem about the sea.\nmodel\nThe waves roll in, the gulls cry out, and salt is on the wind.",
    "The cat sat on the mat and purred quietly while the rain fell outside.",
    "colorless green ideas sleep furiously banana seventeen the the of",
]


def perplexity(model, ids):
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[:, :-1, :]
    losses = torch.nn.CrossEntropyLoss(reduction="none")(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
    return float(torch.exp(losses.mean()))


def main():
    out = {}
    for name, fname in [("gemma-3-270m", "gemma-3-270m-q4_k_m.gguf"), ("smollm2-135m", "smollm2-135m-instruct-q4_1.gguf")]:
        tok = AutoTokenizer.from_pretrained(DEPS, gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(DEPS, gguf_file=fname, torch_dtype=torch.float32).eval()
        rows = []
        for t in TEXTS:
            ids = tok(t, add_special_tokens=True).input_ids
            rows.append({"text": t, "ids": ids, "perplexity": perplexity(model, ids)})
        out[name] = {"file": fname, "rows": rows}
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
