"""Golden files for the SAE wiring of `axbench.fit` / `axbench.infer` (tests/detection.rs `sae_stages_match_numpy`).

Writes, under tests/golden/detection/sae/:
  sae.npz                       a small synthetic GemmaScope-layout JumpReLU SAE (W_enc [d,F], b_enc [F],
                                threshold [F], W_dec [F,d], b_dec [d])
  concept/, negatives/          two `axbench.activations` outputs (activations.safetensors, rows.json,
                                activations.json) holding random activations: one concept (training positives and
                                latent eval rows) and the shared negatives of two genres
  pool/                         an `axbench.activations` output of the imbalanced negative pool: 600 eval negatives
                                (100 per eval positive of the concept: AxBench's 1:100 setting)
  expected.json                 what fit + infer must give, computed here with numpy and scikit-learn:
                                * sae: the concept's own feature (the last path component of its ref); per eval row
                                  the max over tokens after the prefix of round(JumpReLU(h)[f], 3)
                                * sae_a: per-feature training AUROC of max-pooled JumpReLU activations
                                  (sklearn.metrics.roc_auc_score; positives + genre-matched negatives; tokens after
                                  the prefix of the train form), the first best feature, and its eval scores
                                * imbalanced: the SAE feature's scores on the pool and the max F1 of the concept's
                                  eval positives against them over sklearn's precision_recall_curve
                                  (F1 = 2PR/(P+R), 0 where P+R = 0; AxBench's LatentStatsEvaluator)

JumpReLU as AxBench (interventions.JumpReLUSAECollectIntervention): pre = h @ W_enc + b_enc;
acts = (pre > threshold) * relu(pre). Run with the reference venv: `$(scripts/ref-env.sh) make_sae_golden.py`.
"""
import json
import os

import numpy as np
from safetensors.numpy import save_file
from sklearn.metrics import precision_recall_curve, roc_auc_score

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sae")
rng = np.random.default_rng(7)
d, F, PREFIX = 16, 12, 2
FEATURE = 5  # the concept's ref ends in /5

W_enc = rng.normal(size=(d, F)).astype(np.float32)
b_enc = (0.1 * rng.normal(size=F)).astype(np.float32)
threshold = np.abs(rng.normal(size=F)).astype(np.float32)
W_dec = rng.normal(size=(F, d)).astype(np.float32)
b_dec = (0.1 * rng.normal(size=d)).astype(np.float32)
concept_dir = rng.normal(size=d).astype(np.float32)


def jumprelu(h):
    pre = h.astype(np.float32) @ W_enc + b_enc
    return (pre > threshold).astype(np.float32) * np.maximum(pre, 0)


def example(n_tokens, positive, scale=1.5):
    h = rng.normal(size=(n_tokens, d)).astype(np.float32)
    if positive:
        h[PREFIX + rng.integers(0, n_tokens - PREFIX)] += scale * concept_dir
    return h


def write_set(name, rows, concept_id, concept, reference, genre):
    """rows: list of (h [train_len, d], eval_len, row dict)."""
    path = os.path.join(OUT, name)
    os.makedirs(path, exist_ok=True)
    acts = np.concatenate([h for h, _, _ in rows], axis=0).astype(np.float32)
    offsets = np.cumsum([0] + [len(h) for h, _, _ in rows]).astype(np.int64)
    save_file(
        {
            "acts": acts,
            "offsets": offsets,
            "eval_len": np.array([e for _, e, _ in rows], dtype=np.int64),
            "prompt_len": np.full(len(rows), PREFIX + 1, dtype=np.int64),
            "token_ids": np.zeros(len(acts), dtype=np.int64),
        },
        os.path.join(path, "activations.safetensors"),
    )
    with open(os.path.join(path, "rows.json"), "w") as f:
        json.dump([r for _, _, r in rows], f, indent=1)
    meta = {
        "model": "synthetic", "layer": 3, "concept_id": concept_id, "concept": concept, "reference": reference,
        "genre": genre, "prefix_length": PREFIX, "hidden_size": d, "n_examples": len(rows),
        "n_tokens": int(len(acts)), "seconds": 0.0, "tokens_per_s": 0.0,
    }
    with open(os.path.join(path, "activations.json"), "w") as f:
        json.dump(meta, f, indent=1)


def row(split, category, genre, concept_id):
    return {"split": split, "concept_id": concept_id, "category": category, "concept_genre": genre,
            "output_concept": "c", "input": "i", "output": "o", "train_text": "t", "eval_text": "e"}


# The concept: 10 training positives, then 6 eval positives, 6 eval negatives, 2 hard negatives.
concept_rows = []
for _ in range(10):
    n = int(rng.integers(6, 12))
    concept_rows.append((example(n, True), n - 2, row("train", "positive", "text", 0)))
eval_cats = ["positive"] * 6 + ["negative"] * 6 + ["hard negative"] * 2
for cat in eval_cats:
    n = int(rng.integers(6, 12))
    concept_rows.append((example(n, cat == "positive", scale=1.0), n - 2, row("eval", cat, "text", 0)))
write_set("concept", concept_rows, 0, "a synthetic concept", "https://www.neuronpedia.org/x/3-res/5", "text")

# Shared negatives: 8 text (read by the concept's fit), 4 code (not read).
neg_rows = []
for genre in ["text"] * 8 + ["code"] * 4:
    n = int(rng.integers(6, 12))
    neg_rows.append((example(n, False), n - 2, row("train", "negative", genre, -1)))
write_set("negatives", neg_rows, -1, None, None, None)

# The imbalanced pool: 600 eval negatives of other concepts (AxBench samples 36 * 100 from all concepts' negatives).
pool_rows = []
for k in range(600):
    n = int(rng.integers(6, 12))
    pool_rows.append((example(n, k % 50 == 0, scale=0.8), n - 2, row("eval", "negative", "text", 1 + k % 9)))
write_set("pool", pool_rows, -2, None, None, None)

np.savez(os.path.join(OUT, "sae.npz"), W_enc=W_enc, b_enc=b_enc, threshold=threshold, W_dec=W_dec, b_dec=b_dec)

# fit: train form, tokens from the prefix to the end.
train = [h[PREFIX:] for h, _, r in concept_rows if r["split"] == "train"] + [
    h[PREFIX:] for h, _, r in neg_rows if r["concept_genre"] == "text"]
labels = [1] * 10 + [0] * 8
pooled = np.stack([jumprelu(h).max(axis=0) for h in train])  # [examples, F]
aucs = [float(roc_auc_score(labels, pooled[:, f].astype(np.float64))) for f in range(F)]
best = int(np.argmax(aucs))  # first maximum


def eval_scores(f):
    out = []
    for h, e, r in concept_rows:
        if r["split"] == "eval":
            tok = jumprelu(h[PREFIX:e])[:, f]
            out.append(float(max(round(float(x), 3) for x in tok)))
    return out


def pooled_eval(rows, f):
    return [float(max(round(float(x), 3) for x in jumprelu(h[PREFIX:e])[:, f])) for h, e, _ in rows]


pos_scores = [s for s, c in zip(eval_scores(FEATURE), eval_cats) if c == "positive"]
pool_scores = pooled_eval(pool_rows, FEATURE)
y = np.array([1] * len(pos_scores) + [0] * len(pool_scores))
precision, recall, _ = precision_recall_curve(y, np.array(pos_scores + pool_scores))
with np.errstate(divide="ignore", invalid="ignore"):
    f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)

expected = {
    "categories": eval_cats,
    "sae": {"feature": FEATURE, "eval_max_act": eval_scores(FEATURE), "w_dec": W_dec[FEATURE].tolist()},
    "sae_a": {"feature_aucs": aucs, "feature": best, "eval_max_act": eval_scores(best)},
    "imbalanced": {"pool_max_act": pool_scores, "f1": float(f1.max())},
}
with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1)
print("best feature", best, "aucs", [round(a, 3) for a in aucs], "imbalanced F1", float(f1.max()))
