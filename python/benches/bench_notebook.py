"""Time the notebook's timing cells through the `fastlayers` module (call overhead included).

    python python/benches/bench_notebook.py [--cs231n DIR] [--dtype f64|f32] [--reps N]

With --cs231n DIR (a directory holding cs231n/fast_layers.py and its built Cython extension),
cs231n's own fast layers are timed on the same arrays in the same run and the ratio printed.
Each cell is warmed up (a quarter of a second, at least 3 calls), then timed: medians of --reps
calls. Not run by CI.
"""

import argparse
import sys
import time

import numpy as np

import fastlayers as fl


def median_ms(fn, reps, warmup_s=0.25):
    # Warm up first (at least 3 calls and a quarter of a second), the same for both libraries:
    # a fresh process's first calls of a 5 MB-output cell run slower while the allocator's heap
    # grows and the thread pool starts (measured: the first 30 conv_forward_fast calls had a
    # median of 0.58-0.76 ms, the next 270 0.45-0.47), and cs231n's cells run after ours in the
    # same process, when it is warm.
    t0 = time.perf_counter()
    calls = 0
    while calls < 3 or time.perf_counter() - t0 < warmup_s:
        fn()
        calls += 1
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2] * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cs231n", help="directory containing the cs231n package with fast_layers")
    ap.add_argument("--dtype", default="f64", choices=["f64", "f32"])
    ap.add_argument("--reps", type=int, default=21)
    a = ap.parse_args()
    ref = None
    if a.cs231n:
        sys.path.insert(0, a.cs231n)
        from cs231n import fast_layers as ref  # noqa: E402
    dt = np.float64 if a.dtype == "f64" else np.float32
    rng = np.random.RandomState(231)
    x = rng.randn(100, 3, 31, 31).astype(dt)
    w = rng.randn(25, 3, 3, 3).astype(dt)
    b = rng.randn(25).astype(dt)
    dout = rng.randn(100, 25, 16, 16).astype(dt)
    cp = {"stride": 2, "pad": 1}
    xp = rng.randn(100, 3, 32, 32).astype(dt)
    doutp = rng.randn(100, 3, 16, 16).astype(dt)
    pp = {"pool_height": 2, "pool_width": 2, "stride": 2}

    def cells(m):
        _, cc = m.conv_forward_fast(x, w, b, cp)
        _, pc = m.max_pool_forward_fast(xp, pp)
        return [
            ("conv_forward_fast", lambda: m.conv_forward_fast(x, w, b, cp)),
            ("conv_backward_fast", lambda: m.conv_backward_fast(dout, cc)),
            ("max_pool_forward_fast", lambda: m.max_pool_forward_fast(xp, pp)),
            ("max_pool_backward_fast", lambda: m.max_pool_backward_fast(doutp, pc)),
        ]

    ours = [(n, median_ms(f, a.reps)) for n, f in cells(fl)]
    theirs = [median_ms(f, a.reps) for _, f in cells(ref)] if ref else [None] * 4
    print(f"notebook timing cells, {a.dtype}, median of {a.reps} calls (ms)")
    print(f"{'function':<24} {'fastlayers':>11} {'cs231n':>10} {'speedup':>9}")
    for (n, o), t in zip(ours, theirs):
        ts = f"{t:10.3f}" if t is not None else f"{'-':>10}"
        sp = f"{t / o:8.1f}x" if t is not None else f"{'-':>9}"
        print(f"{n:<24} {o:11.3f} {ts} {sp}")
    if ref:
        # Same results, as a sanity check of the comparison.
        o1, c1 = fl.conv_forward_fast(x, w, b, cp)
        o2, _ = ref.conv_forward_fast(x, w, b, cp)
        # rel_error is the notebook's per-element measure (large at near-zero outputs in f32);
        # max|a - b| / max|b| is the error relative to the output's scale.
        scaled = float(np.max(np.abs(o1 - o2)) / np.max(np.abs(o2)))
        print(f"conv_forward_fast difference: rel_error {fl.rel_error(o1, o2):.2e}, "
              f"max|a-b|/max|b| {scaled:.2e}")


if __name__ == "__main__":
    main()
