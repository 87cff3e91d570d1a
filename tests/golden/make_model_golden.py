#!/usr/bin/env python3
"""Reference outputs for the model runtime (models/tests/golden.rs), from HF transformers.

Two parts:

1. Tiny random Gemma-2, Gemma-3 and Llama checkpoints (seeded, a few layers, hidden 64, sliding
   window 4 so the window matters), saved as HF directories under tests/golden/models/tiny-*/,
   with f32 logits and layer-L hidden states on a padded batch, a greedy continuation, and the
   same with an additive steering hook at layer L (HF forward hook on model.layers[L], the
   component AxBench/pyvene intervene on).
2. gemma-3-270m and SmolLM2-135M-Instruct from their GGUF files, loaded by transformers itself
   (`from_pretrained(dir, gguf_file=...)`, float32): token ids of a few prompts (so the Rust
   test does not depend on the tokenizer), next-token top-5, slices and norms of the layer-L
   residual stream, and a greedy 20-token continuation.

Position ids are passed explicitly as cumsum(attention_mask) - 1 (clamped at 0), which is what
HF `generate` uses and what the Rust forward pass computes, so padded rows match unpadded ones.

Usage: $(bash scripts/ref-env.sh) tests/golden/make_model_golden.py [--skip-gguf]
"""

import json
import os
import shutil
import sys

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "golden", "models")
DEPS = os.path.join(ROOT, ".deps", "models")

torch.set_num_threads(2)


def positions(mask):
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def round_list(t, nd=6):
    return [float(f"{x:.{nd}g}") for x in t.flatten().tolist()]


def tiny_models():
    common = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
        attn_implementation="eager",
    )
    return {
        "tiny-gemma2": (
            Gemma2ForCausalLM,
            Gemma2Config(
                num_hidden_layers=4,
                sliding_window=4,
                query_pre_attn_scalar=24,
                attn_logit_softcapping=50.0,
                final_logit_softcapping=30.0,
                **common,
            ),
            2,
        ),
        "tiny-gemma3": (
            Gemma3ForCausalLM,
            Gemma3TextConfig(
                num_hidden_layers=6,
                sliding_window=4,
                query_pre_attn_scalar=16,
                rope_theta=1_000_000.0,
                rope_local_base_freq=10_000.0,
                rope_scaling={"rope_type": "linear", "factor": 2.0},
                **common,
            ),
            3,
        ),
        "tiny-llama": (
            LlamaForCausalLM,
            LlamaConfig(num_hidden_layers=3, tie_word_embeddings=False, rope_theta=10000.0, **common),
            1,
        ),
    }


def randomize(model, seed):
    # HF init leaves Gemma norms at 0 (scale 1) and uses std 0.02, which makes every layer nearly
    # the identity. Random weights of unit-ish scale exercise norms, soft-caps and masks.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def steering_hook(vectors, scales):
    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h + scales[:, None, None] * vectors[:, None, :]
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    return hook


def make_tiny(name, cls, cfg, layer, seed):
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    randomize(model, seed)
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)

    rows = [
        [2, 17, 33, 91, 5, 120, 7, 64, 100, 11],
        [2, 45, 46, 47, 48, 3, 9],
        [2, 125, 127, 77],
    ]
    t = max(map(len, rows))
    out = {"layer": layer, "rows": rows, "cases": {}}
    for padding in ("left", "right"):
        ids = torch.zeros(len(rows), t, dtype=torch.long)
        mask = torch.zeros(len(rows), t, dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(t - len(r), t) if padding == "left" else slice(0, len(r))
            ids[i, sl] = torch.tensor(r)
            mask[i, sl] = 1
        with torch.no_grad():
            o = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), output_hidden_states=True)
        real = mask.bool()
        out["cases"][padding] = {
            "input_ids": ids.tolist(),
            "attention_mask": mask.tolist(),
            # Real positions only, row-major: [n_real, vocab] and [n_real, hidden].
            "logits": round_list(o.logits[real], 8),
            "hidden": round_list(o.hidden_states[layer + 1][real], 8),
        }

    # Steering at layer L with a different vector and scale per row, on the left-padded batch,
    # then a greedy continuation with the hook active (prompt + every generated token).
    g = torch.Generator().manual_seed(seed + 1)
    vectors = torch.randn(len(rows), cfg.hidden_size, generator=g)
    scales = torch.tensor([0.0, 2.0, -1.5])
    case = out["cases"]["left"]
    ids = torch.tensor(case["input_ids"])
    mask = torch.tensor(case["attention_mask"])
    handle = model.model.layers[layer].register_forward_hook(steering_hook(vectors, scales))
    with torch.no_grad():
        o = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask))
        steered_gen = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    handle.remove()
    with torch.no_grad():
        gen = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    out["steer"] = {
        "vectors": round_list(vectors, 8),
        "scales": scales.tolist(),
        "logits": round_list(o.logits[mask.bool()], 8),
        "greedy": steered_gen[:, t:].tolist(),
    }
    out["greedy"] = gen[:, t:].tolist()
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(out, f)
    size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
    print(f"{name}: {size / 1e3:.0f} kB")


GGUF_MODELS = {
    "gemma-3-270m": ("gemma-3-270m-q4_k_m.gguf", 9, "gemma"),
    "smollm2-135m": ("smollm2-135m-instruct-q4_1.gguf", 15, "chatml"),
}

PROMPTS = {
    "plain": "The capital of France is",
    "chat": "What is a good name for a pet cat?",
    "code": "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "unicode": "Grüße aus Zürich! 東京は日本の首都です。 Ελληνικά 🙂",
}


def chat_text(style, tok, user):
    if style == "chatml":
        return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    # gemma-3-270m (base) ships no chat template in the GGUF; this is Gemma's turn format.
    return f"<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n"


def make_gguf(name, fname, layer, style):
    path = os.path.join(DEPS, fname)
    tok = AutoTokenizer.from_pretrained(DEPS, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(DEPS, gguf_file=fname, torch_dtype=torch.float32).eval()
    model.config._attn_implementation = "eager"
    out = {"file": fname, "layer": layer, "prompts": {}}
    for key, text in PROMPTS.items():
        if key == "chat":
            text = chat_text(style, tok, text)
            ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
            if tok.bos_token_id is not None and style == "gemma":
                ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], 1)
        else:
            ids = tok(text, return_tensors="pt").input_ids
        mask = torch.ones_like(ids)
        with torch.no_grad():
            o = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            gen = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=None,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
            )
        last = o.logits[0, -1]
        top = torch.topk(last, 5)
        h = o.hidden_states[layer + 1][0]
        out["prompts"][key] = {
            "text": text,
            "input_ids": ids[0].tolist(),
            "top5_ids": top.indices.tolist(),
            "top5_logits": round_list(top.values, 8),
            "hidden_norms": round_list(h.norm(dim=-1), 8),
            # First 8 dimensions at every position, and the full vector at the last position.
            "hidden_head": round_list(h[:, :8], 8),
            "hidden_last": round_list(h[-1], 8),
            "greedy": gen[0, ids.shape[1]:].tolist(),
        }
        print(name, key, ids.shape[1], "tokens; top1", top.indices[0].item(), "greedy", tok.decode(gen[0, ids.shape[1]:]))
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)


def main():
    os.makedirs(OUT, exist_ok=True)
    for i, (name, (cls, cfg, layer)) in enumerate(tiny_models().items()):
        make_tiny(name, cls, cfg, layer, seed=1234 + i)
    if "--skip-gguf" not in sys.argv:
        for name, (fname, layer, style) in GGUF_MODELS.items():
            make_gguf(name, fname, layer, style)


if __name__ == "__main__":
    main()
