#!/usr/bin/env python3
"""Golden values for the steering aggregation (stages/src/stages/aggregate.rs::aggregate).

The reference is AxBench's procedure as its evaluate.py does it (commit e9b8cd4), re-stated with pandas and numpy
so that pandas' groupby and numpy's argmax decide every case:
  * data_generator: n_input_ids = max(input_id) + 1 per concept; n_steering_ids = n - round(n * 0.5) (Python's
    round, half to even); "steering" keeps input_id < n_steering_ids, "winrate" the rest;
  * LMJudgeEvaluator.compute_metrics: per method, groupby("factor") (sorted) mean of the harmonic-mean score;
  * get_best_factors: factor[np.argmax(lm_judge_rating)] on the steering half;
  * the held-out ("winrate") half at that factor: mean score and ratings (and perplexity, PerplexityEvaluator);
  * win rate against the baseline: per held-out sample at both best factors, |a - b| < 1e-6 is a tie, the paper's
    rate (wins + ties / 2) / total, pooled over every concept;
  * plot_metrics' per-factor curves: the mean over concepts of each concept's per-factor mean.

The judged table itself is random (seeded) ratings in {0, 1, 2} for 3 concepts, two steering methods over three
factors and a one-factor prompting baseline; concept 2 has 5 instructions (round(2.5) = 2: 3 select, 2 test).

Run: python3 tests/golden/aggregate/make_aggregate_golden.py   (writes judged.json and expected.json here)
"""
import json
import os

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
SPLIT = 0.5


def harmonic(ratings):
    if any(r == 0 for r in ratings):
        return 0.0
    return len(ratings) / sum(1.0 / r for r in ratings)


def make_rows():
    rng = np.random.default_rng(20250121)
    rows = []
    for concept_id, n_ids in [(0, 6), (1, 6), (2, 5)]:
        for method, factors in [("DiffMean", [0.5, 1.0, 2.0]), ("LinearProbe", [0.5, 1.0, 2.0]), ("PromptSteering", [1.0])]:
            for factor in factors:
                for input_id in range(n_ids):
                    ratings = [float(x) for x in rng.integers(0, 3, size=3)]
                    rows.append({
                        "model": "gemma-3-270m", "layer": 9, "concept_id": concept_id, "method": method,
                        "factor": factor, "input_id": input_id, "concept_rating": ratings[0],
                        "instruction_rating": ratings[1], "fluency_rating": ratings[2], "score": harmonic(ratings),
                        "perplexity": float(np.round(rng.uniform(2.0, 40.0), 6)),
                    })
    return rows


def split_halves(df):
    out = []
    for cid, g in df.groupby("concept_id"):
        n = g["input_id"].max() + 1
        n_steering = n - round(n * SPLIT)
        g = g.copy()
        g["half"] = np.where(g["input_id"] < n_steering, "selection", "test")
        out.append(g)
    return pd.concat(out)


def main():
    rows = make_rows()
    df = split_halves(pd.DataFrame(rows))
    steering = []
    best = {}
    for (cid, method), g in df.groupby(["concept_id", "method"]):
        sel = g[g["half"] == "selection"]
        per_factor = sel.groupby("factor")["score"].mean()
        factors, scores = list(per_factor.index), list(per_factor.values)
        k = int(np.argmax(scores))
        factor = factors[k]
        best[(cid, method)] = factor
        test = g[(g["half"] == "test") & (g["factor"] == factor)]
        steering.append({
            "concept_id": int(cid), "method": method, "factor": float(factor), "selection_score": float(scores[k]),
            "score": float(test["score"].mean()), "concept_rating": float(test["concept_rating"].mean()),
            "instruction_rating": float(test["instruction_rating"].mean()),
            "fluency_rating": float(test["fluency_rating"].mean()), "perplexity": float(test["perplexity"].mean()),
            "n_test": int(len(test)),
            # The factor that would have been best on the held-out half: the test must not use it.
            "best_test_factor": float(g[g["half"] == "test"].groupby("factor")["score"].mean().idxmax()),
        })

    by_factor = []
    for (method, factor, half), g in df.groupby(["method", "factor", "half"]):
        per_concept = g.groupby("concept_id")[["score", "concept_rating", "instruction_rating", "fluency_rating", "perplexity"]].mean()
        m = per_concept.mean()
        by_factor.append({
            "method": method, "factor": float(factor), "half": half, "score": float(m["score"]),
            "concept_rating": float(m["concept_rating"]), "instruction_rating": float(m["instruction_rating"]),
            "fluency_rating": float(m["fluency_rating"]), "perplexity": float(m["perplexity"]),
            "n_concepts": int(len(per_concept)), "n_samples": int(len(g)),
        })

    win_rates = []
    baseline = "PromptSteering"
    test = df[df["half"] == "test"]
    at_best = test[[best[(c, m)] == f for c, m, f in zip(test["concept_id"], test["method"], test["factor"])]]
    base = at_best[at_best["method"] == baseline][["concept_id", "input_id", "score"]].rename(columns={"score": "base"})
    for method in sorted(set(df["method"]) - {baseline}):
        ours = at_best[at_best["method"] == method][["concept_id", "input_id", "score"]]
        pairs = ours.merge(base, on=["concept_id", "input_id"])
        diff = pairs["score"] - pairs["base"]
        ties = int((diff.abs() < 1e-6).sum())
        wins = int(((diff.abs() >= 1e-6) & (diff > 0)).sum())
        losses = int(len(pairs)) - ties - wins
        win_rates.append({"method": method, "baseline": baseline, "wins": wins, "losses": losses, "ties": ties,
                          "win_rate": (wins + 0.5 * ties) / len(pairs)})

    with open(os.path.join(HERE, "judged.json"), "w") as f:
        json.dump(rows, f, indent=0)
        f.write("\n")
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump({"split_ratio": SPLIT, "baseline": baseline, "steering": steering, "by_factor": by_factor,
                   "win_rates": win_rates}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
