#!/usr/bin/env python3
"""Golden token ids and chat renderings for models/src/tokenizer.rs and models/src/chat.rs.

Reference for both models (see the module docs of tokenizer.rs for why): llama.cpp through
llama-cpp-python, Llama(path, vocab_only=True).tokenize(..., special=True) and .detokenize.
  gemma-3-270m   each row also keeps HF transformers loading the GGUF
                 (AutoTokenizer.from_pretrained(dir, gguf_file=...)) under "transformers": the
                 tests check SpmFlavor::Transformers against it; and SentencePiece's own ids over
                 the same vocabulary ("spm_ids", informational).
  smollm2-135m   transformers' ids where they differ ("alt_ids", informational, not asserted).

Chats are rendered with HF's Jinja chat templates through apply_chat_template: Gemma 3's official
template (google/gemma-3-*-it tokenizer_config.json; the base GGUF has none) and the
tokenizer.chat_template stored in the SmolLM2 GGUF.

Outputs tests/golden/tokenizer/{gemma-3-270m,smollm2-135m}.json from texts.jsonl.
Run: $(bash scripts/ref-env.sh) tests/golden/make_tokenizer_golden.py [models_dir] [gemma|smollm2 ...]
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "golden" / "tokenizer"
MODELS = Path(sys.argv[1]) if len(sys.argv) > 1 and not sys.argv[1] in ("gemma", "smollm2") else ROOT / ".deps" / "models"
WHICH = [a for a in sys.argv[1:] if a in ("gemma", "smollm2")] or ["gemma", "smollm2"]
GEMMA = "gemma-3-270m-q4_k_m.gguf"
SMOL = "smollm2-135m-instruct-q4_1.gguf"

# Gemma 3's chat template, verbatim from google/gemma-3-4b-it tokenizer_config.json.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

CHATS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Where is the treasure?"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "user", "content": "  padded with spaces \n"}, {"role": "assistant", "content": "\tok\n"}],
    [{"role": "system", "content": "Réponds en français.\n"}, {"role": "user", "content": "日本語で説明して 😀"},
     {"role": "assistant", "content": "はい。"}, {"role": "user", "content": "ありがとう"}],
    [{"role": "user", "content": "Code:\n```python\nprint('hi')\n```"}],
    [{"role": "system", "content": "Only a system message."}],
]


def texts():
    with open(OUT / "texts.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def llama_vocab(path):
    from llama_cpp import Llama
    return Llama(model_path=str(path), vocab_only=True, verbose=False)


def lc_tokenize(llm, text, add_bos):
    return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)


def lc_detokenize(llm, ids, skip_special):
    """llama.cpp's own llama_detokenize (Llama.detokenize adds a Python-side hack that drops a
    leading space after BOS). skip_special: remove_special=True, unparse_special=False (control
    tokens vanish); otherwise every token is written out."""
    import ctypes
    import llama_cpp
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    buf = ctypes.create_string_buffer(len(ids) * 256 + 16)
    n = llama_cpp.llama_detokenize(llm._model.vocab, arr, len(ids), buf, len(buf), skip_special, not skip_special)
    assert n >= 0, n
    return buf.raw[:n].decode("utf-8", errors="replace")


def sentencepiece_from_gguf(path):
    """SentencePiece itself running the GGUF's vocabulary as the BPE model it came from (identity
    normalizer, no dummy prefix, byte fallback). Informational: it shows which GGUF conversion
    reproduces Gemma's own algorithm (SentencePiece does not parse control tokens written in text,
    and matches user-defined pieces only literally, so those texts differ from both)."""
    import gguf
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    f = gguf.GGUFReader(path).fields
    toks = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode() for i in f["tokenizer.ggml.tokens"].data]
    scores = [float(f["tokenizer.ggml.scores"].parts[i][0]) for i in f["tokenizer.ggml.scores"].data]
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 3, 2, 1, 0
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for t, sc, ty in zip(toks, scores, types):
        p = m.pieces.add()
        p.piece, p.score, p.type = t, sc, ty if ty in (1, 2, 3, 4, 5, 6) else 1
    return spm.SentencePieceProcessor(model_proto=m.SerializeToString())


def gemma():
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=GEMMA)
    lc = llama_vocab(MODELS / GEMMA)
    sp = sentencepiece_from_gguf(MODELS / GEMMA)
    rows, n_diff, n_spm_hf, n_spm_lc = [], 0, 0, 0
    for t in texts():
        ids = lc_tokenize(lc, t["text"], True)
        plain = lc_tokenize(lc, t["text"], False)
        row = {"id": t["id"], "ids": ids, "ids_no_special": plain,
               "decode": lc_detokenize(lc, plain, False), "decode_skip_special": lc_detokenize(lc, ids, True)}
        hf_ids = tok(t["text"]).input_ids
        hf_plain = tok(t["text"], add_special_tokens=False).input_ids
        row["transformers"] = {"ids": hf_ids, "ids_no_special": hf_plain, "decode": tok.decode(hf_plain),
                               "decode_skip_special": tok.decode(hf_ids, skip_special_tokens=True)}
        n_diff += hf_ids != ids
        row["spm_ids"] = [tok.bos_token_id] + sp.encode(t["text"])
        n_spm_hf += row["spm_ids"] == hf_ids
        n_spm_lc += row["spm_ids"] == ids
        rows.append(row)
    chats = []
    for c in CHATS:
        for gen in (False, True):
            text = tok.apply_chat_template(c, chat_template=GEMMA3_CHAT_TEMPLATE, tokenize=False,
                                           add_generation_prompt=gen)
            hf_ids = tok.apply_chat_template(c, chat_template=GEMMA3_CHAT_TEMPLATE, tokenize=True,
                                             add_generation_prompt=gen)
            # The rendered text starts with "<bos>", which llama.cpp parses as the BOS token.
            chats.append({"messages": c, "add_generation_prompt": gen, "text": text,
                          "ids": lc_tokenize(lc, text, False), "transformers_ids": list(hf_ids)})
    meta = {"reference": "llama.cpp (llama-cpp-python) Llama(vocab_only=True).tokenize(special=True)",
            "transformers": f"AutoTokenizer.from_pretrained(gguf_file={GEMMA!r})",
            "n_transformers_differ": int(n_diff),
            "spm": "sentencepiece BPE over the GGUF vocabulary (spm_ids), informational",
            "n_spm_equal_reference": int(n_spm_lc), "n_spm_equal_transformers": int(n_spm_hf), "n_texts": len(rows),
            "bos_id": lc.token_bos(), "vocab_size": lc.n_vocab(),
            "llama_cpp_python": __import__("llama_cpp").__version__,
            "transformers_version": __import__("transformers").__version__}
    print("gemma:", meta)
    return {"meta": meta, "texts": rows, "chats": chats}


def smollm2():
    import gguf
    lc = llama_vocab(MODELS / SMOL)
    template = gguf.GGUFReader(MODELS / SMOL).fields["tokenizer.chat_template"].contents()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=SMOL)
    rows, n_diff = [], 0
    for t in texts():
        ids = lc_tokenize(lc, t["text"], True)
        plain = lc_tokenize(lc, t["text"], False)
        row = {"id": t["id"], "ids": ids, "ids_no_special": plain,
               "decode": lc_detokenize(lc, plain, False), "decode_skip_special": lc_detokenize(lc, ids, True)}
        alt = tok(t["text"], add_special_tokens=False).input_ids
        if alt != plain:
            row["alt_ids"] = alt
            n_diff += 1
        rows.append(row)
    chats = []
    for c in CHATS:
        for gen in (False, True):
            text = tok.apply_chat_template(c, chat_template=template, tokenize=False, add_generation_prompt=gen)
            chats.append({"messages": c, "add_generation_prompt": gen, "text": text,
                          "ids": lc_tokenize(lc, text, False)})
    meta = {"reference": "llama.cpp (llama-cpp-python) Llama(vocab_only=True).tokenize(special=True)",
            "alt": f"transformers AutoTokenizer.from_pretrained(gguf_file={SMOL!r}), add_special_tokens=False",
            "n_alt_differ": n_diff, "bos_id": lc.token_bos(), "eos_id": lc.token_eos(), "vocab_size": lc.n_vocab()}
    print("smollm2:", meta)
    return {"meta": meta, "texts": rows, "chats": chats}


def main():
    for name, fn in [("gemma", gemma), ("smollm2", smollm2)]:
        if name not in WHICH:
            continue
        g = fn()
        out = OUT / {"gemma": "gemma-3-270m.json", "smollm2": "smollm2-135m.json"}[name]
        out.write_text(json.dumps(g, ensure_ascii=False, indent=None) + "\n")
        print("wrote", out)


if __name__ == "__main__":
    main()
