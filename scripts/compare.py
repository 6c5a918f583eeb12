#!/usr/bin/env python3
"""Turn `fastlayers bench --json` and `torch_layers.py` outputs into the kernels.md table.

    scripts/compare.py OURS.json [OURS2.json ...] -- TORCH.json [TORCH2.json ...]

Each file holds one run; with several runs per side the median of the per-run medians is used.
Prints a markdown table: naive ms (if present), fast ms, PyTorch ms, ratio, GFLOP/s, % of the
measured peak, the issue's target and whether it is met.
"""
import json
import statistics
import sys

TARGETS = {  # (op, dtype) -> max ratio ours/PyTorch
    ("conv_fwd", "f32"): 1.0, ("conv_bwd", "f32"): 1.0,
    ("conv_fwd", "f64"): 0.5, ("conv_bwd", "f64"): 0.5,
    ("pool_fwd", "f32"): 0.5, ("pool_fwd", "f64"): 0.5,
    ("pool_bwd", "f32"): 1.0, ("pool_bwd", "f64"): 1.0,
    ("bn_fwd", "f32"): 0.5, ("bn_fwd", "f64"): 0.5, ("bn_bwd", "f32"): 0.5, ("bn_bwd", "f64"): 0.5,
    ("gn_fwd", "f32"): 1.0, ("gn_fwd", "f64"): 1.0, ("gn_bwd", "f32"): 1.0, ("gn_bwd", "f64"): 1.0,
}


def load(paths):
    runs = {}
    peaks = []
    for p in paths:
        for line in open(p):
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if r.get("op") == "peak":
                peaks.append(r)
                continue
            key = (r["op"], r["shape"], r["dtype"], r.get("impl", "fast"))
            runs.setdefault(key, []).append(r)
    return runs, peaks


def main():
    args = sys.argv[1:]
    sep = args.index("--")
    ours, peaks = load(args[:sep])
    theirs, _ = load(args[sep + 1:])
    peak = {"f32": statistics.median(p["gflops_f32"] for p in peaks),
            "f64": statistics.median(p["gflops_f64"] for p in peaks)} if peaks else {}
    print(f"Measured peak: {peak.get('f32', 0):.0f} GFLOP/s f32, {peak.get('f64', 0):.0f} GFLOP/s f64 "
          f"({len(args[:sep])} runs of ours, {len(args[sep + 1:])} of PyTorch; medians)\n")
    print("| op | shape | dtype | naive ms | fast ms | PyTorch ms | ratio | GFLOP/s | % peak | target | met |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for (op, shape, dt, impl), rs in ours.items():  # the bench's own order
        if impl != "fast":
            continue
        ms = statistics.median(r["ms"] for r in rs)
        naive = ours.get((op, shape, dt, "naive"))
        nv = f"{statistics.median(r['ms'] for r in naive):.2f}" if naive else ""
        t = theirs.get((op, shape, dt, "fast"))
        tms = statistics.median(r["ms"] for r in t) if t else None
        ratio = ms / tms if tms else None
        gf = statistics.median(r["gflops"] for r in rs) if "gflops" in rs[0] else None
        pct = f"{100 * gf / peak[dt]:.0f}%" if gf and dt in peak else ""
        tgt = TARGETS.get((op, dt))
        met = "" if ratio is None or tgt is None else ("yes" if ratio <= tgt else "**no**")
        print(f"| {op} | {shape} | {dt} | {nv} | {ms:.3f} | {'' if tms is None else f'{tms:.3f}'} | "
              f"{'' if ratio is None else f'{ratio:.2f}'} | {'' if gf is None else f'{gf:.1f}'} | {pct} | "
              f"{'' if tgt is None else f'<= {tgt}'} | {met} |")


if __name__ == "__main__":
    main()
