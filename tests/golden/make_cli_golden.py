#!/usr/bin/env python3
"""Reference outputs for `axbench model` (tests/model_cli.rs), on the two embedded GGUF models.

For each model and each text of TEXTS (unicode, whitespace runs, code, chat turns written with the
model's special tokens) and one `--chat` prompt:

  ids      token ids with the tokenizer's default special tokens (BOS where the model adds it),
           from llama.cpp through llama-cpp-python (tokenize(add_bos=True, special=True); llama.cpp
           only adds BOS where the vocabulary says so: Gemma's does, SmolLM2's does not). llama.cpp,
           not HF's GGUF conversion, because it reproduces the models' own tokenizers (see
           models/src/tokenizer.rs and tests/golden/tokenizer/).
  tokens   the GGUF vocabulary strings of those ids (llama_vocab_get_text).
  top5     next-token top-5 ids and raw logits after the text, from transformers' model loaded from
           the same GGUF in float32 (`from_pretrained(dir, gguf_file=...)`), run on `ids`.
  greedy   transformers' greedy 20-token continuation of `ids` (eos_token_id=None: never stops).

`--chat` prompts are rendered as one user turn with the generation prompt: SmolLM2 with the
Jinja template stored in its GGUF, Gemma 3 with Gemma 3's official template (the base GGUF has
none; the same template tests/golden/make_tokenizer_golden.py uses).

Plus one `activations` case per model: the full residual stream hidden_states[L+1] ([T, D]) of a
short text at a middle layer L.

Outputs tests/golden/cli/{gemma-3-270m,smollm2-135m}.json.
Run: $(bash scripts/ref-env.sh) tests/golden/make_cli_golden.py
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "cli")
DEPS = os.path.join(ROOT, ".deps", "models")
sys.path.insert(0, HERE)
from make_tokenizer_golden import GEMMA3_CHAT_TEMPLATE  # noqa: E402

torch.set_num_threads(2)

COMMON = {
    "unicode": "Grüße aus Zürich! 東京は日本の首都です。 Ελληνικά 🙂 naïve café",
    "spaces": "a  b   c\t\td\n\n\n    indented line   with trailing   ",
    "code": "fn main() {\n    let xs = vec![1, 22, 333];\n    println!(\"{:?}\", xs);\n}\n",
}
TURNS = {
    "gemma": "<start_of_turn>user\nWhat is 12 * 7?<end_of_turn>\n<start_of_turn>model\n",
    "chatml": "<|im_start|>user\nWhat is 12 * 7?<|im_end|>\n<|im_start|>assistant\n",
}
CHAT_USER = "Name three primary colors."
ACT_TEXT = "The quick brown fox jumps"

MODELS = {
    "gemma-3-270m": ("gemma-3-270m-q4_k_m.gguf", "gemma", 6),
    "smollm2-135m": ("smollm2-135m-instruct-q4_1.gguf", "chatml", 17),
}


def r(t, nd=7):
    return [float(f"{x:.{nd}g}") for x in t.flatten().tolist()]


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, (fname, style, layer) in MODELS.items():
        tok = AutoTokenizer.from_pretrained(DEPS, gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(DEPS, gguf_file=fname, torch_dtype=torch.float32).eval()
        model.config._attn_implementation = "eager"
        from llama_cpp import Llama, llama_vocab_get_text

        lc = Llama(model_path=os.path.join(DEPS, fname), vocab_only=True, verbose=False)

        def encode(text):
            return lc.tokenize(text.encode("utf-8"), add_bos=True, special=True)

        def tokens(ids):
            return [llama_vocab_get_text(lc._model.vocab, i).decode("utf-8") for i in ids]

        if style == "chatml":
            import gguf

            template = gguf.GGUFReader(os.path.join(DEPS, fname)).fields["tokenizer.chat_template"].contents()
        else:
            template = GEMMA3_CHAT_TEMPLATE
        # The rendered text carries Gemma's "<bos>" itself (ChatML has none).
        chat_text = tok.apply_chat_template([{"role": "user", "content": CHAT_USER}], chat_template=template,
                                            tokenize=False, add_generation_prompt=True)
        chat_ids = lc.tokenize(chat_text.encode("utf-8"), add_bos=False, special=True)

        def run(ids):
            x = torch.tensor([ids])
            with torch.no_grad():
                o = model(input_ids=x, output_hidden_states=True)
                gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=20,
                                     do_sample=False, eos_token_id=None,
                                     pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0)
            top = torch.topk(o.logits[0, -1], 5)
            return o, {"top5_ids": top.indices.tolist(), "top5_logits": r(top.values),
                       "greedy": gen[0, len(ids):].tolist()}

        cases = []
        texts = dict(COMMON, turns=TURNS[style])
        for key, text in texts.items():
            ids = encode(text)
            _, res = run(ids)
            cases.append(dict({"id": key, "text": text, "ids": ids, "tokens": tokens(ids)}, **res))
            print(name, key, len(ids), "tokens; greedy:", repr(tok.decode(res["greedy"])))
        _, res = run(chat_ids)
        chat = dict({"user": CHAT_USER, "text": chat_text, "ids": chat_ids}, **res)
        print(name, "chat greedy:", repr(tok.decode(res["greedy"])))

        act_ids = encode(ACT_TEXT)
        o, _ = run(act_ids)
        h = o.hidden_states[layer + 1][0]
        act = {"text": ACT_TEXT, "layer": layer, "ids": act_ids, "tokens": tokens(act_ids),
               "shape": list(h.shape), "values": [r(row) for row in h]}
        meta = {
            "file": fname,
            "tokenizer_reference": "llama.cpp (llama-cpp-python) tokenize(add_bos=True, special=True)",
            "model_reference": f"transformers AutoModelForCausalLM.from_pretrained(gguf_file={fname!r}), float32, eager",
            "num_layers": model.config.num_hidden_layers,
            "hidden_size": model.config.hidden_size,
            "vocab_size": model.config.vocab_size,
        }
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump({"meta": meta, "texts": cases, "chat": chat, "activations": act}, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
