"""Reference for `axbench.activations`: the Python way AxBench extracts layer-L activations, timed on the same rows.

HF transformers loads the same GGUF (dequantized to float32), the rows are templated exactly as the Rust stage does
(chat template with the generation prompt, the template's 2 suffix tokens stripped: the "train form"), batched the
same way (longest first, at most 8192 padded tokens and 64 rows a batch, right padding), and the forward pass reads
layer L's output with a forward hook on `model.model.layers[L]` after truncating the layer list to L+1 (early stop;
pyvene's collect intervention does the same read without the truncation).

    OMP_WAIT_POLICY=PASSIVE $(bash scripts/ref-env.sh) benches/detection/hf_activations.py \
        --concept 0 [--layer 9] [--threads 2] [--ours PATH/activations.safetensors]

`--ours` compares with the Rust stage's `activations.safetensors` of the same node (take its blob path from
`axbench show 'activations[concept=0]'`): same token ids, and the max abs difference of the activations.
"""

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]


def rows_of(data_dir: Path, concept: int):
    train = pd.read_parquet(data_dir / "train_data.parquet")
    if concept == -1:
        sel = train[(train.output_concept == "EEEEE") & (train.category == "negative")]
        return list(zip(sel.input, sel.output))
    meta = [json.loads(l) for l in open(data_dir / "metadata.jsonl") if l.strip()]
    name = next(m["concept"] for m in meta if m["concept_id"] == concept)
    pos = train[(train.concept_id == concept) & (train.output_concept == name) & (train.category == "positive")]
    ev = pd.read_parquet(data_dir / "latent_eval_data.parquet")
    ev = ev[ev.concept_id == concept]
    return list(zip(pos.input, pos.output)) + list(zip(ev.input, ev.output))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared/axbench-data/concept10/prod_2b_l20_v1"))
    ap.add_argument("--gguf", default="gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--concept", type=int, default=0)
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--ours", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    deps = ROOT / ".deps/models"

    t = time.time()
    tok = AutoTokenizer.from_pretrained(deps, gguf_file=args.gguf)
    model = AutoModelForCausalLM.from_pretrained(deps, gguf_file=args.gguf, torch_dtype=torch.float32).eval()
    model.model.layers = model.model.layers[: args.layer + 1]  # stop after layer L
    load_s = time.time() - t

    ids = []
    for instruction, response in rows_of(Path(args.data), args.concept):
        # The base GGUF carries no chat template: Gemma's turn format written out (HF's template trims contents).
        text = (f"<bos><start_of_turn>user\n{instruction.strip()}<end_of_turn>\n"
                f"<start_of_turn>model\n{response.strip()}<end_of_turn>\n<start_of_turn>model\n")
        full = tok(text, add_special_tokens=False)["input_ids"]
        ids.append(list(full)[:-2])  # train.py strips the template's suffix length (2 for Gemma)

    captured = {}

    def hook(_module, _args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output

    model.model.layers[args.layer].register_forward_hook(hook)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    acts = [None] * len(ids)
    t = time.time()
    with torch.inference_mode():
        start = 0
        while start < len(order):
            longest = len(ids[order[start]])
            n = min(max(args.batch_tokens // longest, 1), 64, len(order) - start)
            batch = order[start : start + n]
            x = torch.zeros((n, longest), dtype=torch.long)
            mask = torch.zeros((n, longest), dtype=torch.long)
            for b, i in enumerate(batch):
                x[b, : len(ids[i])] = torch.tensor(ids[i])
                mask[b, : len(ids[i])] = 1
            model.model(input_ids=x, attention_mask=mask, use_cache=False)
            h = captured["h"]
            for b, i in enumerate(batch):
                acts[i] = h[b, : len(ids[i])].clone()
            start += n
    secs = time.time() - t
    n_tokens = sum(map(len, ids))
    print(json.dumps({"impl": "transformers " + __import__("transformers").__version__, "torch": torch.__version__,
                      "concept": args.concept, "layer": args.layer, "rows": len(ids), "tokens": n_tokens,
                      "load_s": round(load_s, 2), "seconds": round(secs, 2), "tokens_per_s": round(n_tokens / secs, 1),
                      "threads": args.threads}))

    if args.ours:
        from safetensors.torch import load_file

        ours = load_file(args.ours)
        ref_ids = torch.tensor([t for r in ids for t in r])
        assert torch.equal(ours["token_ids"], ref_ids), "token ids differ from the Rust stage's"
        ref = torch.cat(acts, 0)
        diff = (ours["acts"] - ref).abs()
        scale = ref.abs().max().item()
        print(json.dumps({"same_token_ids": True, "max_abs_diff": diff.max().item(), "max_abs_activation": scale,
                          "mean_abs_diff": diff.mean().item()}))


if __name__ == "__main__":
    main()
