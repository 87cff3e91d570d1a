#!/usr/bin/env python3
"""Golden layout of AxBench's released latent-eval data, for crates/lm/tests/synth_layout.rs.

Reads the released Concept10 latent_eval_data.parquet files (read-only, outside the repository) and
records, per run and concept: the concept's genre, the (category, concept_genre) row counts, whether
every negative carries the concept itself as output_concept, and whether every hard negative's
output_concept has the "word//meaning" form. The Rust test checks that our synthesis produces the
same layout. Needs pandas + pyarrow (the reference venv):
  $(bash scripts/ref-env.sh) tests/golden/synth/make_latent_layout_golden.py \
      /work/shared/axbench-data/concept10 > tests/golden/synth/latent_layout.json
"""
import json
import os
import sys

import pandas as pd


def layout(run_dir):
    meta = [json.loads(l) for l in open(os.path.join(run_dir, "metadata.jsonl"))]
    df = pd.read_parquet(os.path.join(run_dir, "latent_eval_data.parquet"))
    out = []
    for m in meta:
        cid = m["concept_id"]
        d = df[df.concept_id == cid]
        counts = {f"{c}/{g}": int(n) for (c, g), n in d.groupby(["category", "concept_genre"]).size().items()}
        neg = d[d.category == "negative"]
        hard = d[d.category == "hard negative"]
        out.append({
            "concept_id": cid,
            "genre": m["concept_genres_map"][m["concept"]][0],
            "counts": counts,
            "negatives_name_the_concept": bool((neg.output_concept == m["concept"]).all()),
            "hard_negatives_are_word_meaning": bool(hard.output_concept.str.contains("//").all()),
            "hard_negatives_share_concept_genre": bool((hard.concept_genre == m["concept_genres_map"][m["concept"]][0]).all()),
        })
    return out


if __name__ == "__main__":
    root = sys.argv[1]
    runs = sorted(r for r in os.listdir(root) if os.path.isdir(os.path.join(root, r)))
    print(json.dumps({r: layout(os.path.join(root, r)) for r in runs}, indent=1, sort_keys=True))
