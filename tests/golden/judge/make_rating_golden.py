#!/usr/bin/env python3
"""Golden values for the judge's rating parser (stages/src/judge.rs::parse_rating).

The reference is AxBench's rule as its evaluator code applies it (axbench/evaluators/lm_judge.py,
`_get_rating_from_completion` + `_get_ratings_from_completions`, commit e9b8cd4), re-stated here
step by step in Python so that Python's own `str.split`, `str.strip` and `float` decide every edge
case. Run: python3 tests/golden/judge/make_rating_golden.py > tests/golden/judge/rating_cases.json
"""
import json
import math

CASES = [
    "The concept is clearly present.\nRating: [[2]]",
    "Rating: [[0]]",
    "Rating: [[1]]",
    "Some text. Rating: [[1]]\n",
    "Rating: [[1.5]]",
    "Rating: 2",
    "Rating: [2]",
    "Rating: [[2]].",
    "Rating: **2**",
    "Rating: \"2\"",
    "Rating: '1'",
    "Rating: [[ 2 ]]",
    "Rating: [[3]]",
    "Rating: [[-1]]",
    "Rating: [[2.0001]]",
    "Rating: [[nan]]",
    "Rating: [[inf]]",
    "Rating: [[two]]",
    "Rating: [[2]] because it fits",
    "Rating: [[2]]\nThe explanation comes after.",
    "First Rating: [[2]]. Final Rating: [[0]]",
    "Rating: [[1]] ... Rating: [[2]]",
    "Rating: [[2]] Rating:",
    "No rating here at all.",
    "rating: [[2]]",
    "RATING: [[2]]",
    "**Rating:** [[2]]",
    "Rating:[[1]]",
    "Rating:\n[[2]]",
    "Rating:\n\n2",
    "Rating: [[1e0]]",
    "Rating: [[+1]]",
    "Rating: [[1_0]]",
    "Rating: [[.5]]",
    "Rating: [[2.]]",
    "Rating: [[]]",
    "Rating:",
    "",
    "Rating: [[1]]\r\n",
    "Rating: [[0.0]]",
    "Rating: [[2]]**",
    "Rating: *[[1]]*.",
    "Rating: [[1]]/2",
    "Rating: [[1, 2]]",
    "Explanation...\n\nRating: [[1]]\n\nNote: Rating: [[2]] would need more.",
]


def reference(completion):
    """(value, status) per AxBench's rule; status says why a 0 is a 0."""
    if "Rating:" not in completion:
        return 0.0, "missing"
    text = completion.split("Rating:")[-1].strip()
    text = text.split("\n")[0].strip()
    text = text.replace("[", "").replace("]", "")
    text = text.rstrip(".").strip('"').strip("'").strip("*").strip()
    try:
        value = float(text)
    except ValueError:
        return 0.0, "unparsable"
    if 0.0 <= value <= 2.0:
        return value, "parsed"
    return 0.0, "out_of_range"


if __name__ == "__main__":
    rows = []
    for c in CASES:
        value, status = reference(c)
        assert not math.isnan(value)
        rows.append({"completion": c, "value": value, "status": status})
    print(json.dumps(rows, indent=1))
