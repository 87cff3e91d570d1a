#!/usr/bin/env python3
"""Creates every output file of the generated DVC/Snakemake DAG, inputs before outputs (so
mtimes ascend along edges), without running thousands of subprocesses: what a finished run
leaves behind. usage: populate_outputs.py DIR CONCEPTS SETTINGS METHODS"""
import os, sys, time

d, C, S, M = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
settings = [f"s{i}" for i in range(S)]
methods = [f"m{i}" for i in range(M)]

def w(rel, text):
    p = os.path.join(d, "out", rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(text)

for c in range(C):
    w(f"synth/{c}", f"{c}\n")
time.sleep(0.01)
for c in range(C):
    for s in settings:
        w(f"acts/{c}-{s}", f"{c}\n")
for st in ["fit", "infer", "steer", "judge"]:
    time.sleep(0.01)
    for c in range(C):
        for s in settings:
            for m in methods:
                w(f"{st}/{c}-{s}-{m}", f"{c}\n")
time.sleep(0.01)
for s in settings:
    for m in methods:
        w(f"agg/{s}-{m}", "".join(f"{c}\n" for c in range(C)))
