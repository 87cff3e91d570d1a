#!/usr/bin/env python3
"""Generates the engine benchmark DAG in three equivalent forms.

Shaped like the AxBench paper sweep: C concepts x S model/layer settings x M methods over
7 stages, every node a trivial command:

    synth[c] -> acts[c,s] -> fit[c,s,m] -> infer[c,s,m]
                                       \\-> steer[c,s,m] -> judge[c,s,m] -> agg[s,m] (gathers c)

  axbench:   <out>/axbench.toml            (toy stages, fan-out written once)
  DVC:       <out>/dvc/dvc.yaml            (foreach/matrix stages, `echo` commands)
  Snakemake: <out>/smk/Snakefile           (wildcards, `echo` shell rules)

usage: gen.py OUT_DIR [--concepts 500] [--settings 4] [--methods 10]
"""

import argparse
import os

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--concepts", type=int, default=500)
p.add_argument("--settings", type=int, default=4)
p.add_argument("--methods", type=int, default=10)
a = p.parse_args()
C, S, M = a.concepts, a.settings, a.methods
os.makedirs(a.out, exist_ok=True)
concepts = list(range(C))
settings = [f"s{i}" for i in range(S)]
methods = [f"m{i}" for i in range(M)]
nodes = C + C * S + 4 * C * S * M + S * M
print(f"{nodes} nodes ({C} concepts x {S} settings x {M} methods, 7 stages)")

def tl(xs):
    return "[" + ", ".join(f'"{x}"' if isinstance(x, str) else str(x) for x in xs) + "]"

# For axbench, settings and methods are tables whose `name` makes the node id and whose `v`
# goes into the stage's `offset`, so every node's output value (and blob) is distinct, as in a
# real sweep: a no-op then has to check 82k distinct blobs, not a few hundred shared ones.
def tables(names, scale):
    return "[" + ", ".join(f'{{ name = "{n}", v = {scale * (i + 1)} }}' for i, n in enumerate(names)) + "]"

with open(os.path.join(a.out, "axbench.toml"), "w") as f:
    f.write(f"""[pipeline]
name = "bench"
description = "Synthetic AxBench-shaped sweep for the engine benchmark"

[params.concepts]
default = {tl(concepts)}
description = "Concept ids"

[params.settings]
default = {tables(settings, 1000)}
description = "Model/layer settings"

[params.methods]
default = {tables(methods, 1000000)}
description = "Methods"

[stages.synth]
kind = "test.const"
foreach = {{ c = "${{concepts}}" }}
params = {{ value = "${{c}}" }}

[stages.acts]
kind = "test.add"
inputs = {{ x = "synth" }}
foreach = {{ c = "${{concepts}}", s = "${{settings}}" }}
params = {{ offset = "${{s.v}}" }}

[stages.fit]
kind = "test.add"
inputs = {{ x = "acts" }}
foreach = {{ c = "${{concepts}}", s = "${{settings}}", m = "${{methods}}" }}
params = {{ offset = "${{m.v}}" }}

[stages.infer]
kind = "test.add"
inputs = {{ x = "fit" }}
foreach = {{ c = "${{concepts}}", s = "${{settings}}", m = "${{methods}}" }}
params = {{ offset = 0.25 }}

[stages.steer]
kind = "test.add"
inputs = {{ x = "fit" }}
foreach = {{ c = "${{concepts}}", s = "${{settings}}", m = "${{methods}}" }}
params = {{ offset = 0.5 }}

[stages.judge]
kind = "test.add"
inputs = {{ x = "steer" }}
foreach = {{ c = "${{concepts}}", s = "${{settings}}", m = "${{methods}}" }}
params = {{ offset = 0.125 }}

[stages.agg]
kind = "test.add"
inputs = {{ all = "judge" }}
foreach = {{ s = "${{settings}}", m = "${{methods}}" }}
""")

# DVC: matrix stages over the same products; each writes one small file.
d = os.path.join(a.out, "dvc")
os.makedirs(d, exist_ok=True)
with open(os.path.join(d, "dvc.yaml"), "w") as f:
    f.write("stages:\n")
    f.write(f"""  synth:
    matrix:
      c: {concepts}
    cmd: mkdir -p out/synth && echo ${{item.c}} > out/synth/${{item.c}}
    outs:
      - out/synth/${{item.c}}
  acts:
    matrix:
      c: {concepts}
      s: {settings}
    cmd: mkdir -p out/acts && cat out/synth/${{item.c}} > out/acts/${{item.c}}-${{item.s}}
    deps:
      - out/synth/${{item.c}}
    outs:
      - out/acts/${{item.c}}-${{item.s}}
""")
    for st, dep in [("fit", "acts/${item.c}-${item.s}"), ("infer", "fit/${item.c}-${item.s}-${item.m}"), ("steer", "fit/${item.c}-${item.s}-${item.m}"), ("judge", "steer/${item.c}-${item.s}-${item.m}")]:
        f.write(f"""  {st}:
    matrix:
      c: {concepts}
      s: {settings}
      m: {methods}
    cmd: mkdir -p out/{st} && cat out/{dep} > out/{st}/${{item.c}}-${{item.s}}-${{item.m}}
    deps:
      - out/{dep}
    outs:
      - out/{st}/${{item.c}}-${{item.s}}-${{item.m}}
""")
    f.write(f"""  agg:
    matrix:
      s: {settings}
      m: {methods}
    cmd: mkdir -p out/agg && cat out/judge/*-${{item.s}}-${{item.m}} > out/agg/${{item.s}}-${{item.m}}
    deps:
{"".join(f"      - out/judge/{c}-${{item.s}}-${{item.m}}" + chr(10) for c in concepts)}    outs:
      - out/agg/${{item.s}}-${{item.m}}
""")

# Snakemake: wildcard rules; `all` asks for every agg and infer output.
d = os.path.join(a.out, "smk")
os.makedirs(d, exist_ok=True)
with open(os.path.join(d, "Snakefile"), "w") as f:
    f.write(f"""C = {concepts}
S = {settings}
M = {methods}

rule all:
    input: expand("out/agg/{{s}}-{{m}}", s=S, m=M), expand("out/infer/{{c}}-{{s}}-{{m}}", c=C, s=S, m=M)

rule synth:
    output: "out/synth/{{c}}"
    shell: "echo {{wildcards.c}} > {{output}}"

rule acts:
    input: "out/synth/{{c}}"
    output: "out/acts/{{c}}-{{s}}"
    shell: "cat {{input}} > {{output}}"

rule fit:
    input: "out/acts/{{c}}-{{s}}"
    output: "out/fit/{{c}}-{{s}}-{{m}}"
    shell: "cat {{input}} > {{output}}"

rule infer:
    input: "out/fit/{{c}}-{{s}}-{{m}}"
    output: "out/infer/{{c}}-{{s}}-{{m}}"
    shell: "cat {{input}} > {{output}}"

rule steer:
    input: "out/fit/{{c}}-{{s}}-{{m}}"
    output: "out/steer/{{c}}-{{s}}-{{m}}"
    shell: "cat {{input}} > {{output}}"

rule judge:
    input: "out/steer/{{c}}-{{s}}-{{m}}"
    output: "out/judge/{{c}}-{{s}}-{{m}}"
    shell: "cat {{input}} > {{output}}"

rule agg:
    input: expand("out/judge/{{c}}-{{{{s}}}}-{{{{m}}}}", c=C)
    output: "out/agg/{{s}}-{{m}}"
    shell: "cat {{input}} > {{output}}"
""")
