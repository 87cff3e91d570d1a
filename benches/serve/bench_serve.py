#!/usr/bin/env python3
"""Throughput of `axbench serve` vs llama-cpp-python's OpenAI server on the same GGUF, on CPU.

Both servers get 2 threads; every request is `POST /v1/completions` with the same prompt,
`max_tokens`, and greedy decoding. For 1, 8 and 32 concurrent clients we send a fixed number of
requests and report requests/s and generated tokens/s (from each response's `usage`).
llama-cpp-python's server handles one request at a time; ours batches concurrent requests.

Usage (from the repository root, after `cargo build --release`):
  $(bash scripts/ref-env.sh) benches/serve/bench_serve.py [--model default-instruct] [--max-tokens 32]
Writes benches/out/serve.json and prints a Markdown table.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = {"default": "gemma-3-270m-q4_k_m.gguf", "default-instruct": "smollm2-135m-instruct-q4_1.gguf"}
PROMPT = "Once upon a time, in a small village by the sea, there lived"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/v1/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not start")


def complete(base, max_tokens):
    body = json.dumps({"model": "m", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(f"{base}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    return out["usage"]["completion_tokens"], time.perf_counter() - t


def run_level(base, clients, n_requests, max_tokens):
    """`clients` threads each send requests back to back until `n_requests` have been sent."""
    with ThreadPoolExecutor(clients) as pool:
        t0 = time.perf_counter()
        results = list(pool.map(lambda _: complete(base, max_tokens), range(n_requests)))
        wall = time.perf_counter() - t0
    tokens = sum(t for t, _ in results)
    latencies = sorted(l for _, l in results)
    return {"clients": clients, "requests": n_requests, "wall_s": wall, "req_per_s": n_requests / wall,
            "tok_per_s": tokens / wall, "tokens": tokens, "p50_latency_s": latencies[len(latencies) // 2]}


def bench(name, cmd, port, levels, max_tokens, env):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        run_level(base, 1, 1, max_tokens)  # warm-up
        out = []
        for clients, n in levels:
            r = run_level(base, clients, n, max_tokens)
            r["server"] = name
            print(json.dumps(r), file=sys.stderr)
            out.append(r)
        return out
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default-instruct", choices=sorted(FILES))
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--levels", default="1:4,8:16,32:64", help="clients:requests,...")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    a = ap.parse_args()
    deps = Path(os.environ.get("AXBENCH_DEPS", Path.home() / ".cache/axbench-deps"))
    gguf = deps / "models" / FILES[a.model]
    levels = [tuple(int(x) for x in l.split(":")) for l in a.levels.split(",")]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="2")
    binary = ROOT / "target/release/axbench"
    results = []
    port = free_port()
    results += (bench("axbench serve", [str(binary), "serve", "--model", str(gguf), "--port", str(port),
                                                   "--device", "cpu", "--threads", "2"], port, levels, a.max_tokens, env))
    if not a.skip_llama_cpp:
        port = free_port()
        results += (bench("llama-cpp-python server", [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
                                                                "--port", str(port), "--n_threads", "2", "--n_ctx", "2048"],
                                     port, levels, a.max_tokens, env))
    out = ROOT / "benches/out/serve.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": FILES[a.model], "max_tokens": a.max_tokens, "results": results}, indent=1))
    print(f"| server | clients | requests | req/s | tokens/s | p50 latency (s) |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['server']} | {r['clients']} | {r['requests']} | {r['req_per_s']:.2f} | {r['tok_per_s']:.1f} | {r['p50_latency_s']:.2f} |")


if __name__ == "__main__":
    main()
