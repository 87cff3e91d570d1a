"""Independent check of the detection pipeline's DiffMean numbers, from its own cached activations.

Recomputes, in numpy + scikit-learn and without any of the Rust code, what `axbench.fit` (DiffMean) and
`axbench.infer` + `axbench.evaluate` do for one concept: the binarized training set (the concept's train positives,
the shared negatives of its genre), w = mean(positive tokens) - mean(negative tokens) over the tokens after the
4-token chat prefix, unit norm; scores = round(h.w, 3) max-pooled over the eval form's tokens after the prefix; ROC AUC
of positives vs negatives (sklearn). Prints both AUROCs.

    $(bash scripts/ref-env.sh) benches/detection/check_diffmean.py --cache-dir /tmp/axc --concept 0 [--set ...]

It finds the nodes' blobs with `axbench show` (the latest computed node of that id).
"""

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[2]


def outputs(cache, node):
    out = subprocess.run([str(ROOT / "target/debug/axbench"), "-C", str(ROOT), "--cache-dir", cache, "show", node],
                         check=True, capture_output=True, text=True).stdout
    m = json.loads(out[: out.rindex("}") + 1])
    return {k: Path(cache) / "blobs" / v["digest"][:2] / v["digest"] for k, v in m["outputs"].items()}


def load(cache, node):
    o = outputs(cache, node)
    t = load_file(str(o["activations.safetensors"]))
    return t, json.load(open(o["rows.json"])), json.load(open(o["activations.json"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--concept", type=int, default=0)
    args = ap.parse_args()
    c, crows, cmeta = load(args.cache_dir, f"activations[concept={args.concept}]")
    n, nrows, _ = load(args.cache_dir, "negatives")
    prefix = cmeta["prefix_length"]

    def tokens(t, i, end):
        return t["acts"][t["offsets"][i] + prefix : t["offsets"][i] + end]

    pos = [tokens(c, i, c["offsets"][i + 1] - c["offsets"][i]) for i, r in enumerate(crows) if r["split"] == "train"]
    neg = [tokens(n, i, n["offsets"][i + 1] - n["offsets"][i]) for i, r in enumerate(nrows) if r["concept_genre"] == cmeta["genre"]]
    w = np.concatenate(pos).astype(np.float64).mean(0) - np.concatenate(neg).astype(np.float64).mean(0)
    w = (w / (np.linalg.norm(w) + np.finfo(np.float32).eps)).astype(np.float32)
    labels, scores = [], []
    for i, r in enumerate(crows):
        if r["split"] != "eval" or r["category"] == "hard negative":
            continue
        s = np.round(tokens(c, i, c["eval_len"][i]) @ w, 3).max()
        labels.append(r["category"] == "positive")
        scores.append(s)
    ours = outputs(args.cache_dir, "evaluate")
    res = json.load(open(ours["results.json"]))["detection"]
    reported = next(r["auroc"] for r in res if r["method"] == "DiffMean" and r["concept_id"] == args.concept)
    print(json.dumps({"concept": args.concept, "positives": len(pos), "negatives": len(neg),
                      "auroc_numpy_sklearn": roc_auc_score(labels, scores), "auroc_pipeline": reported}))


if __name__ == "__main__":
    main()
