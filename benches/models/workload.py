"""Shared by the Python reference benchmarks: the token ids and timing rule of benches/models/main.rs."""
import time


def ids(batch, length, salt):
    """Deterministic pseudo-random token ids (BOS = 2 first), the xorshift of main.rs."""
    x = 0x2545F4914F6CDD1D ^ salt
    rows = []
    for _ in range(batch):
        row = []
        for i in range(length):
            x ^= (x << 13) & 0xFFFFFFFFFFFFFFFF
            x ^= x >> 7
            x ^= (x << 17) & 0xFFFFFFFFFFFFFFFF
            row.append(2 if i == 0 else 1000 + x % 20000)
        rows.append(row)
    return rows


def best(reps, f):
    """Best of `reps` timed runs after one warm-up, in seconds."""
    f()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return min(out)
