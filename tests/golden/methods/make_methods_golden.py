#!/usr/bin/env python3
"""Golden files for the detection methods and metrics (stages/src/methods, stages/src/metrics.rs).

Run with the reference venv (scripts/ref-env.sh):

    $(bash scripts/ref-env.sh) tests/golden/methods/make_methods_golden.py

Everything here follows AxBench's code at stanfordnlp/axbench@e9b8cd4 (axbench/models/{mean,probe,bow,sae}.py,
axbench/evaluators/{aucroc,hard_negative,latent_stats}.py), rewritten over plain arrays so that no model is needed:
the Rust side gets the same per-token activations and must reproduce the reference outputs within tolerances.

Outputs (small, committed):
  inputs.safetensors   activations, segment offsets, labels, probe init and batch orders, LAT permutation, SAE params
  sae_params.npz       the same SAE params as GemmaScope ships them (params.npz layout: W_enc [d,F], ...)
  expected.safetensors reference directions (DiffMean, PCA, LAT, probe variants), SAE token activations
  expected.json        scalars, texts, BoW vocabulary and probabilities, metric values and curves
"""
import json
import math
import os
import sys

import numpy as np
import sklearn
import sklearn.decomposition
import torch
from safetensors.numpy import save_file
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve

OUT = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(20250221)
D = 32
EPS32 = float(np.finfo(np.float32).eps)


# ----------------------------------------------------------------------------------------------------------------
# Synthetic activations with a planted concept direction
# ----------------------------------------------------------------------------------------------------------------
def make_split(n_seq, direction, offset, scale=1.0):
    """n_seq sequences, alternating positive/negative; positives carry the direction on ~60% of their tokens."""
    acts, offsets, labels = [], [0], []
    for i in range(n_seq):
        label = 1 if i % 2 == 0 else 0
        n_tok = int(rng.integers(6, 15))
        x = rng.normal(size=(n_tok, D)).astype(np.float32) + offset
        if label == 1:
            on = rng.random(n_tok) < 0.6
            x[on] += 2.5 * direction
        acts.append(x * scale)
        offsets.append(offsets[-1] + n_tok)
        labels.append(label)
    return np.concatenate(acts).astype(np.float32), np.array(offsets, dtype=np.int64), np.array(labels, dtype=np.int64)


direction = rng.normal(size=D).astype(np.float32)
direction /= np.linalg.norm(direction)
offset = (rng.normal(size=D) * 0.5).astype(np.float32)
offset[7] += 4.0  # an "outlier" coordinate, like the residual streams of small Gemma models
train_acts, train_offsets, train_labels = make_split(40, direction, offset)
eval_acts, eval_offsets, eval_labels = make_split(20, direction, offset)


def token_labels(offsets, labels):
    return np.repeat(labels, np.diff(offsets))


train_tok_labels = token_labels(train_offsets, train_labels)
pos_tokens = train_acts[train_tok_labels == 1]
neg_tokens = train_acts[train_tok_labels == 0]


def unit_norm_torch(w):
    """axbench.utils.model_utils.set_decoder_norm_to_unit_norm: w / (||w|| + eps) with the dtype's eps."""
    w = torch.as_tensor(w, dtype=torch.float32).unsqueeze(0)
    eps = torch.finfo(w.dtype).eps
    return (w / (torch.norm(w, dim=1, keepdim=True) + eps))[0].numpy()


# DiffMean (models/mean.py DiffMean.train): token-weighted means, difference, unit norm.
diffmean = unit_norm_torch(
    torch.from_numpy(pos_tokens).mean(dim=0) - torch.from_numpy(neg_tokens).mean(dim=0)
)

# PCA (models/mean.py PCA.train): sklearn PCA(n_components=2) on positive-token activations, first component.
pca = sklearn.decomposition.PCA(n_components=2).fit(pos_tokens)
pca_w = unit_norm_torch(torch.tensor(pca.components_[0]))

# LAT (models/mean.py LAT.train): np.random.shuffle -> we pass the permutation explicitly.
lat_perm = rng.permutation(pos_tokens.shape[0]).astype(np.int64)
shuffled = pos_tokens[lat_perm]
length = shuffled.shape[0] // 2
diffs = shuffled[:length] - shuffled[length : length * 2]
norms = np.linalg.norm(diffs, axis=1, keepdims=True)
diffs = np.where(norms == 0, 0, diffs / norms)
lat_pca = sklearn.decomposition.PCA(n_components=2).fit(diffs)
lat_w = unit_norm_torch(torch.tensor(lat_pca.components_[0]))


def lat_as_axbench(acts, seed):
    """LAT.train verbatim on arrays, after transformers.set_seed(seed) seeded numpy's global RNG."""
    np.random.seed(seed)
    acts = acts.copy()
    np.random.shuffle(acts)
    length = acts.shape[0] // 2
    acts = acts[:length] - acts[length : length * 2]
    norms = np.linalg.norm(acts, axis=1, keepdims=True)
    acts = np.where(norms == 0, 0, acts / norms)
    return unit_norm_torch(torch.tensor(sklearn.decomposition.PCA(n_components=2).fit(acts).components_[0]))


lat_seed42 = lat_as_axbench(pos_tokens, 42)


# ----------------------------------------------------------------------------------------------------------------
# Linear probe (models/probe.py LinearProbe.train), with a fixed init and fixed batch order
# ----------------------------------------------------------------------------------------------------------------
BS, EPOCHS, LR, WD = 12, 24, 5e-3, 1e-3
n_train = len(train_labels)
probe_init = rng.uniform(-1 / math.sqrt(D), 1 / math.sqrt(D), size=D).astype(np.float32)
probe_orders = np.stack([rng.permutation(n_train) for _ in range(EPOCHS)]).astype(np.int64)


def run_probe(acts, coeff_l1, stable):
    proj = torch.nn.Linear(D, 1)
    with torch.no_grad():
        proj.weight.copy_(torch.from_numpy(probe_init).unsqueeze(0))
        proj.bias.fill_(0)
    optimizer = torch.optim.AdamW(proj.parameters(), lr=LR, weight_decay=WD)
    batches_per_epoch = math.ceil(n_train / BS)
    total = EPOCHS * batches_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, float(total - step) / float(max(1, total)))
    )  # transformers get_scheduler("linear", num_warmup_steps=0)
    acts_t = torch.from_numpy(acts)
    for epoch in range(EPOCHS):
        order = probe_orders[epoch]
        for b in range(batches_per_epoch):
            idx = order[b * BS : (b + 1) * BS]
            rows = torch.cat([acts_t[train_offsets[i] : train_offsets[i + 1]] for i in idx])
            y = torch.cat(
                [torch.full((train_offsets[i + 1] - train_offsets[i],), float(train_labels[i])) for i in idx]
            )
            latent = rows @ proj.weight[0]
            if stable:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(latent, y)
            else:
                loss = torch.nn.BCELoss()(torch.sigmoid(latent), y)
            loss = loss + coeff_l1 * sum(p.abs().sum() for p in proj.parameters())
            loss.backward()
            with torch.no_grad():  # set_decoder_norm_to_unit_norm + remove_gradient_parallel_to_decoder_directions
                w = proj.weight
                w.data /= torch.norm(w.data, dim=1, keepdim=True) + torch.finfo(w.dtype).eps
                par = (w.grad * w.data).sum(dim=1)
                w.grad -= par[:, None] * w.data
            optimizer.step()
            sched.step()
            optimizer.zero_grad()
    return proj.weight.detach()[0].numpy().copy()


BIG = 500.0  # residual norms of small Gemma-3 models are in the thousands
probe_faithful = run_probe(train_acts, 0.0, stable=False)
probe_l1 = run_probe(train_acts, 1e-3, stable=False)
probe_stable = run_probe(train_acts, 0.0, stable=True)
probe_faithful_big = run_probe(train_acts * BIG, 0.0, stable=False)
probe_stable_big = run_probe(train_acts * BIG, 0.0, stable=True)


# ----------------------------------------------------------------------------------------------------------------
# Detection scores as inference does them: h . w per token, rounded to 3 dp, max-pooled (first max wins)
# ----------------------------------------------------------------------------------------------------------------
def pooled(acts, offsets, w):
    tok = (torch.from_numpy(acts) @ torch.from_numpy(w)).float().numpy()
    out_max, out_idx = [], []
    for i in range(len(offsets) - 1):
        a = [round(float(x), 3) for x in tok[offsets[i] : offsets[i + 1]]]
        m = max(a)
        out_max.append(m)
        out_idx.append(a.index(m))
    return out_max, out_idx


scores = {}
for name, w in [("DiffMean", diffmean), ("PCA", pca_w), ("LAT", lat_w), ("LinearProbe", probe_faithful)]:
    m, idx = pooled(eval_acts, eval_offsets, w)
    scores[name] = {"max_act": m, "max_act_idx": idx, "auroc": float(roc_auc_score(eval_labels, m))}


# ----------------------------------------------------------------------------------------------------------------
# GemmaScope JumpReLU SAE (interventions.JumpReLUSAECollectIntervention) and SAE-A (sae.GemmaScopeSAEMaxAUC)
# ----------------------------------------------------------------------------------------------------------------
F = 16
W_enc = (rng.normal(size=(D, F)) * 0.3).astype(np.float32)
W_enc[:, 5] = direction * 1.5  # feature 5 reads the concept
b_enc = (rng.normal(size=F) * 0.1).astype(np.float32)
threshold = np.abs(rng.normal(size=F) * 0.5).astype(np.float32)
W_dec = (rng.normal(size=(F, D)) * 0.3).astype(np.float32)
b_dec = (rng.normal(size=D) * 0.1).astype(np.float32)
np.savez(os.path.join(OUT, "sae_params.npz"), W_enc=W_enc, b_enc=b_enc, threshold=threshold, W_dec=W_dec, b_dec=b_dec)


def jumprelu(x):
    pre = torch.from_numpy(x) @ torch.from_numpy(W_enc) + torch.from_numpy(b_enc)
    return ((pre > torch.from_numpy(threshold)) * torch.relu(pre)).numpy()


sae_train_acts = jumprelu(train_acts)  # [tokens, F]
sae_eval_acts = jumprelu(eval_acts)
pos_max = [sae_train_acts[train_offsets[i] : train_offsets[i + 1]].max(axis=0) for i in range(n_train) if train_labels[i] == 1]
neg_max = [sae_train_acts[train_offsets[i] : train_offsets[i + 1]].max(axis=0) for i in range(n_train) if train_labels[i] == 0]
all_acts = np.concatenate([np.stack(pos_max), np.stack(neg_max)])
all_labels = np.concatenate([np.ones(len(pos_max)), np.zeros(len(neg_max))])
sae_aucs = [float(roc_auc_score(all_labels, all_acts[:, f])) for f in range(F)]
sae_best = int(torch.tensor(sae_aucs).topk(10).indices[0].item())
sae_scores = {}
for f in [5, sae_best]:
    tok = sae_eval_acts[:, f]
    mx = []
    for i in range(len(eval_offsets) - 1):
        a = [round(float(x), 3) for x in tok[eval_offsets[i] : eval_offsets[i + 1]]]
        mx.append(max(a))
    sae_scores[str(f)] = mx


# ----------------------------------------------------------------------------------------------------------------
# Bag of words (models/bow.py): CountVectorizer() + LogisticRegression(l2, C=100, lbfgs, max_iter=1000)
# ----------------------------------------------------------------------------------------------------------------
words = ("the a of and to in is it for on with as was at by an be this that from or rental rent lease equipment "
         "tools hire Équipement naïve café über x y 2 42 foo_bar snake_case CamelCase don't e-mail").split()
concept_words = ["rental", "rent", "lease", "equipment", "hire", "Équipement"]


def sentence(positive):
    n = int(rng.integers(8, 25))
    toks = list(rng.choice(words, size=n))
    if positive:
        for _ in range(int(rng.integers(1, 4))):
            toks.insert(int(rng.integers(0, len(toks) + 1)), str(rng.choice(concept_words)).upper() if rng.random() < 0.3 else str(rng.choice(concept_words)))
    seps = [" ", " ", " ", ", ", ". ", "! ", "\n", " - "]
    return "".join(t + str(rng.choice(seps)) for t in toks).strip()


bow_train_texts = [sentence(i % 2 == 0) for i in range(60)]
bow_train_labels = [1 if i % 2 == 0 else 0 for i in range(60)]
# Make it not perfectly separable so the optimum is finite and well conditioned.
bow_train_labels[1] = 1
bow_train_labels[2] = 0
bow_eval_texts = [sentence(i % 2 == 0) for i in range(20)] + ["", "RENTAL rental ÉQUIPEMENT", "unseen words only zzz"]
vec = CountVectorizer()
X = vec.fit_transform(bow_train_texts)
clf = LogisticRegression(C=100, solver="lbfgs", max_iter=1000, random_state=42).fit(X, bow_train_labels)
bow_probs = clf.predict_proba(vec.transform(bow_eval_texts))[:, 1]
clf_tight = LogisticRegression(C=100, solver="lbfgs", max_iter=100000, tol=1e-12, random_state=42).fit(X, bow_train_labels)
bow_probs_tight = clf_tight.predict_proba(vec.transform(bow_eval_texts))[:, 1]


# ----------------------------------------------------------------------------------------------------------------
# Metrics: sklearn on scores with ties, AxBench's evaluators on a concept frame
# ----------------------------------------------------------------------------------------------------------------
def axbench_aucroc(max_acts, categories):
    """evaluators/aucroc.py AUCROCEvaluator.compute_metrics (pandas semantics spelled out)."""
    max_acts = np.asarray(max_acts, dtype=np.float64)
    lo, hi = np.nanmin(max_acts), np.nanmax(max_acts)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = (max_acts - lo) / (hi - lo)
    labels_map = {"positive": 1, "negative": 0, "hard negative seen": 0, "hard negative unseen": 0}
    keep = [c in labels_map for c in categories]
    y = np.array([labels_map[c] for c, k in zip(categories, keep) if k])
    s = np.nan_to_num(norm[np.array(keep)], nan=0.0)
    fpr, tpr, thr = roc_curve(y, s)
    j = tpr - fpr
    i = int(np.argmax(j))
    return {"max_act": float(hi), "roc_auc": float(auc(fpr, tpr)), "optimal_threshold": float(thr[i]),
            "fpr": fpr.tolist(), "tpr": tpr.tolist()}


def axbench_hard_negative(max_acts, categories):
    """evaluators/hard_negative.py HardNegativeEvaluator.compute_metrics."""
    max_acts = np.asarray(max_acts, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = (max_acts - max_acts.min()) / (max_acts.max() - max_acts.min())
    norm = np.nan_to_num(norm, nan=0.0)
    cats = np.array(categories)
    m = np.isin(cats, ["positive", "negative"])
    y = (cats[m] == "positive").astype(int)
    fpr, tpr, thr = roc_curve(y, norm[m])
    t = thr[int(np.argmax(tpr - fpr))]
    if np.isinf(float(t)):
        return {}
    acc = {}
    for c, lab in [("positive", 1), ("hard negative", 0)]:
        sel = cats == c
        if sel.sum() == 0:
            return {}
        acc[c] = float(((norm[sel] >= t).astype(int) == lab).mean())
    return {"positive_accuracy": acc["positive"], "hard_negative_accuracy": acc["hard negative"],
            "macro_avg_accuracy": float(np.mean(list(acc.values()))), "threshold": float(t)}


def axbench_max_f1(labels, s):
    """evaluators/latent_stats.py: F1 over the precision_recall_curve points, argmax, threshold."""
    precision, recall, thresholds = precision_recall_curve(labels, s)
    f1 = np.zeros_like(precision)
    mask = (precision + recall) > 0
    f1[mask] = 2 * (precision[mask] * recall[mask]) / (precision[mask] + recall[mask])
    i = int(np.argmax(f1))
    return {"f1": float(f1[i]), "threshold": float(thresholds[i]), "precision": precision.tolist(),
            "recall": recall.tolist(), "thresholds": thresholds.tolist()}


metric_cases = []
for case in range(6):
    n = int(rng.integers(5, 60))
    y = rng.integers(0, 2, size=n)
    y[0], y[1] = 0, 1
    s = np.round(rng.normal(size=n) + 0.8 * y, 1)  # rounding creates ties
    if case == 0:
        s = np.round(rng.random(n) * 3) / 3  # heavy ties
    fpr, tpr, thr = roc_curve(y, s)
    fpr_all, tpr_all, thr_all = roc_curve(y, s, drop_intermediate=False)
    metric_cases.append({
        "labels": y.tolist(), "scores": s.tolist(), "roc_auc": float(roc_auc_score(y, s)),
        "fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist(),
        "fpr_all": fpr_all.tolist(), "tpr_all": tpr_all.tolist(), "thresholds_all": thr_all.tolist(),
        "max_f1": axbench_max_f1(y, s),
    })

import warnings
warnings.simplefilter("ignore")
degenerate = {}
y = np.array([0, 1, 0, 1, 1])
degenerate["all_equal"] = {"labels": y.tolist(), "scores": [0.3] * 5, "roc_auc": float(roc_auc_score(y, [0.3] * 5)),
                           "max_f1": axbench_max_f1(y, np.array([0.3] * 5))}
one = np.array([1, 1, 1])
degenerate["one_class"] = {"labels": one.tolist(), "scores": [0.1, 0.5, 0.2],
                           "roc_auc_is_nan": bool(np.isnan(roc_auc_score(one, [0.1, 0.5, 0.2])))}

# A concept frame like latent_data.parquet: 36 positives, 36 negatives, some hard negatives.
concepts = []
for c in range(4):
    n_hard = [0, 3, 7, 2][c]
    cats = ["positive"] * 36 + ["negative"] * 36 + ["hard negative"] * n_hard
    acts = np.concatenate([rng.normal(2.0, 1.0, 36), rng.normal(0.0, 1.0, 36), rng.normal(1.5, 1.0, n_hard)])
    acts = np.round(acts * 10, 0) / 10 * 7.5 + 3  # ties, not normalised
    if c == 3:
        acts = np.full(len(cats), 1.25)  # all equal -> NaN normalisation -> 0
    concepts.append({"categories": cats, "max_act": acts.tolist(), "aucroc": axbench_aucroc(acts, cats),
                     "hard_negative": axbench_hard_negative(acts, cats)})

# The imbalanced setting: the concept's 36 positives against 3600 pooled negatives (1:100), best F1 on the PR curve.
imb_pos = np.round(rng.normal(2.0, 1.0, 36), 3)
imb_neg = np.round(rng.normal(0.0, 1.0, 3600), 3)
imb_y = np.concatenate([np.ones(36), np.zeros(3600)])
imb_s = np.concatenate([imb_pos, imb_neg])
imbalanced = {"pos": imb_pos.tolist(), "neg": imb_neg.tolist(), "max_f1": axbench_max_f1(imb_y, imb_s)["f1"],
              "balanced_max_f1": axbench_max_f1(imb_y[:72], imb_s[:72])["f1"]}


# ----------------------------------------------------------------------------------------------------------------
# End to end on AxBench's released Concept10 (2B, L20), if present: train.py's per-concept selection, BoW, and the
# latent evaluators on inference's eval rows. Only the resulting numbers are stored, never the data.
# ----------------------------------------------------------------------------------------------------------------
CONCEPT10 = "/work/shared/axbench-data/concept10/prod_2b_l20_v1"


def gemma_train_text(i, o):
    # Gemma chat turn without BOS; train.py adds the generation prompt, then strips the 2 suffix tokens.
    return f"<start_of_turn>user\n{i}<end_of_turn>\n<start_of_turn>model\n{o}<end_of_turn>\n<start_of_turn>"


def gemma_eval_text(i, o):
    return f"<start_of_turn>user\n{i}<end_of_turn>\n<start_of_turn>model\n{o}"


concept10 = None
if os.path.isdir(CONCEPT10):
    import pandas as pd

    meta = [json.loads(l) for l in open(os.path.join(CONCEPT10, "metadata.jsonl")) if l.strip()]
    train_df = pd.read_parquet(os.path.join(CONCEPT10, "train_data.parquet"))
    eval_df = pd.read_parquet(os.path.join(CONCEPT10, "latent_eval_data.parquet"))
    negative_df = train_df[(train_df["output_concept"] == "EEEEE") & (train_df["category"] == "negative")]
    concept10 = []
    for m in meta:
        concept, cid = m["concept"], m["concept_id"]
        genre = m["concept_genres_map"][concept][0]
        concept_df = train_df[train_df["concept_id"] == cid]
        pos = concept_df[(concept_df["output_concept"] == concept) & (concept_df["category"] == "positive")]
        neg = negative_df[negative_df["concept_genre"] == genre]
        texts = [gemma_train_text(i, o) for i, o in zip(pos["input"], pos["output"])] + [
            gemma_train_text(i, o) for i, o in zip(neg["input"], neg["output"])]
        y = [1] * len(pos) + [0] * len(neg)
        ev = eval_df[eval_df["concept_id"] == cid]
        ev_texts = [gemma_eval_text(i, o) for i, o in zip(ev["input"], ev["output"])]
        cvec = CountVectorizer()
        Xc = cvec.fit_transform(texts)
        out = {"concept_id": cid, "n_pos": len(pos), "n_neg": len(neg), "n_eval": len(ev)}
        for tag, kw in [("default", dict(max_iter=1000)), ("tight", dict(max_iter=100000, tol=1e-12))]:
            cclf = LogisticRegression(C=100, solver="lbfgs", random_state=42, **kw).fit(Xc, y)
            probs = cclf.predict_proba(cvec.transform(ev_texts))[:, 1]
            out[f"{tag}_auroc"] = axbench_aucroc(probs, ev["category"].tolist())["roc_auc"]
            out[f"{tag}_hard_negative"] = axbench_hard_negative(probs, ev["category"].tolist())
            out[f"{tag}_probs_head"] = probs[:5].tolist()
        concept10.append(out)


# ----------------------------------------------------------------------------------------------------------------
save_file({
    "train_acts": train_acts, "train_offsets": train_offsets, "train_labels": train_labels,
    "eval_acts": eval_acts, "eval_offsets": eval_offsets, "eval_labels": eval_labels,
    "lat_perm": lat_perm, "probe_init": probe_init, "probe_orders": probe_orders,
    "sae_W_enc": W_enc, "sae_b_enc": b_enc, "sae_threshold": threshold, "sae_W_dec": W_dec, "sae_b_dec": b_dec,
}, os.path.join(OUT, "inputs.safetensors"))
save_file({
    "diffmean": diffmean, "pca": pca_w, "lat": lat_w, "lat_seed42": lat_seed42,
    "probe_faithful": probe_faithful, "probe_l1": probe_l1, "probe_stable": probe_stable,
    "probe_faithful_big": probe_faithful_big, "probe_stable_big": probe_stable_big,
    "sae_eval_acts": sae_eval_acts.astype(np.float32),
}, os.path.join(OUT, "expected.safetensors"))
def finite_json(x):
    """JSON has no inf/nan: write them as the strings "inf", "-inf", "nan"."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_json(v) for v in x]
    return x


with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump(finite_json({
        "versions": {"sklearn": sklearn.__version__, "numpy": np.__version__, "torch": torch.__version__},
        "probe": {"batch_size": BS, "epochs": EPOCHS, "lr": LR, "weight_decay": WD, "l1": 1e-3, "big_scale": BIG},
        "pca_explained_variance_ratio": float(pca.explained_variance_ratio_[0]),
        "scores": scores,
        "sae": {"feature_aucs": sae_aucs, "best_feature": sae_best, "eval_max_act": sae_scores},
        "bow": {"train_texts": bow_train_texts, "train_labels": bow_train_labels, "eval_texts": bow_eval_texts,
                "vocabulary": vec.get_feature_names_out().tolist(), "probs": bow_probs.tolist(),
                "probs_tight": bow_probs_tight.tolist(), "n_iter": int(clf.n_iter_[0])},
        "metrics": {"cases": metric_cases, "degenerate": degenerate, "concepts": concepts, "imbalanced": imbalanced},
        "concept10_bow": concept10,
    }), f, indent=1, ensure_ascii=False, allow_nan=False)
print("wrote", OUT, file=sys.stderr)
