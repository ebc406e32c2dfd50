#!/usr/bin/env python3
"""The GPU attention figure of README's "What the ablations show", from the committed H100 benchmark
output: results/reference/gpu/2026-11-26_h100_9292421/ (prefill versions 2-5 and PyTorch SDPA, one run) and
results/reference/gpu/2026-11-26_h100_e1f6e52/ (prefill version 1, decode attention). Llama-2-7B heads (32 query
and 32 KV heads of 128), bf16. Left: causal prefill time of one sequence (contiguous KV), every
flash version beside SDPA. Right: decode attention's KV read rate (paged KV in blocks of 16)
against the HBM peak. Writes <out>.png (default plots/out/gpu_attention.png, untracked).
Run with Debian's python3 (python3-matplotlib, python3-pandas):
  /usr/bin/python3 plots/gpu_attention.py               # -> plots/out/gpu_attention.png
  /usr/bin/python3 plots/gpu_attention.py --committed   # regenerates the committed plots/gpu_attention.png"""
import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _python  # noqa: E402

_python.require(["pandas", "matplotlib"], __file__, __name__ == "__main__")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shown(path):
    """path relative to the repository when inside it."""
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path
BENCH = os.path.join(ROOT, "results", "reference", "gpu", "2026-11-26_h100_e1f6e52")
PREFILL = os.path.join(ROOT, "results", "reference", "gpu", "2026-11-26_h100_9292421")
LLAMA = 1  # bench_attention_cuda's shape index of llama2-7b
KV_BYTES_PER_TOKEN = 2 * 32 * 128 * 2  # K and V, 32 KV heads of 128, 2-byte elements


def medians(folder):
    path = os.path.join(folder, "bench_attention_cuda.json")
    if not os.path.exists(path):
        sys.exit(f"gpu_attention.py: missing {path}")
    data = json.load(open(path))
    peak = float(data["context"]["peak_GB/s"].split()[0]) * 1e9
    rows = []
    for b in data["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        name = b["run_name"].split("/")[0]
        args = dict(re.findall(r"(\w+):(\d+)", b["run_name"]))
        rows.append({"kernel": name, **{k: int(v) for k, v in args.items()}, "us": b["real_time"]})
    return pd.DataFrame(rows), peak


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", default=os.path.join(ROOT, "plots", "out", "gpu_attention"),
                     help="output path without extension (.png is written); default plots/out/gpu_attention")
    out.add_argument("--committed", action="store_true", help="write the committed plots/gpu_attention.png")
    a = p.parse_args(argv)
    OUT = os.path.join(ROOT, "plots", "gpu_attention.png") if a.committed else a.out + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(OUT)), exist_ok=True)
    df, peak = medians(BENCH)
    pre_new, _ = medians(PREFILL)
    sdpa = pd.read_csv(os.path.join(PREFILL, "sdpa.csv"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4.2))

    pre = pd.concat([df[df.version == 1], pre_new])  # v1 from build e1f6e52's run, v2-v5 from build 9292421's
    pre = pre[(pre.kernel == "BM_CudaFlashPrefill") & (pre["shape"] == LLAMA)]
    for version, style in ((1, "o--"), (2, "o--"), (3, "o-"), (4, "o-"), (5, "o-")):
        d = pre[pre.version == version].sort_values("ctx")
        left.plot(d.ctx, d.us / 1e3, style, label=f"flash v{version}" + (" (default)" if version == 5 else ""))
    s = sdpa[(sdpa.kind == "prefill") & (sdpa["shape"] == "llama2-7b")].sort_values("ctx")
    left.plot(s.ctx, s.ms, "s-", color="black", label="PyTorch SDPA (flash)")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("prompt tokens (one sequence, causal)")
    left.set_ylabel("ms (median)")
    left.set_title("prefill attention, llama2-7b heads")
    left.legend()

    dec = df[df.kernel.isin(["BM_CudaFlashDecode", "BM_CudaFlashSplit"]) & (df["shape"] == LLAMA)].copy()
    dec["TBps"] = dec.batch * dec.ctx * KV_BYTES_PER_TOKEN / (dec.us * 1e-6) / 1e12
    for (kernel, batch, version), d in dec.groupby(["kernel", "batch", "version"]):
        d = d.sort_values("ctx")
        label = f"{'flash_split' if kernel.endswith('Split') else 'flash'} v{int(version)}, batch {int(batch)}"
        style = "o-" if version == 2 else "X"
        right.plot(d.ctx, d.TBps, style, label=label, markersize=7 if version == 1 else 5)
    right.axhline(peak / 1e12, color="black", linestyle=":", label=f"HBM peak {peak / 1e12:.2f} TB/s")
    right.set_xscale("log", base=2)
    right.set_xlabel("context tokens per sequence")
    right.set_ylabel("KV read, TB/s")
    right.set_title("decode attention, llama2-7b heads, paged/16")
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("NVIDIA H100 80GB HBM3, bf16 (results/reference/gpu/2026-11-26_h100_{9292421,e1f6e52})", fontsize=9)
    fig.tight_layout()
    tmp = OUT + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, OUT)  # atomically: never a half-written figure
    print("wrote", shown(OUT))


if __name__ == "__main__":
    main(sys.argv[1:])
