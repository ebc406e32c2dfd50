#!/usr/bin/env python3
"""Attention kernels: median time and workspace_bytes vs context length (log-log, side by side),
one line per implementation, from experiments/bench_attention's Google Benchmark JSON
(--benchmark_format=json --benchmark_out=...; aggregates or raw repetitions both work).
Writes <out>.png (150 dpi) and <out>.pdf. Run with Debian's python3 (python3-matplotlib, python3-pandas):
  /usr/bin/python3 plots/attention.py               # reference JSON -> plots/out/attention_prefill.* (untracked)
  /usr/bin/python3 plots/attention.py --committed   # regenerates the committed plots/attention_prefill.*"""
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
IMPLS = {"BM_AttentionNaive": "naive", "BM_AttentionFlash": "flash", "BM_AttentionFlashSplit": "flash_split"}
COLORS = {"naive": "tab:red", "flash": "tab:blue", "flash_split": "tab:green"}
TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def die(msg):
    sys.exit(f"attention.py: error: {msg}")


def load(path):
    try:
        with open(path) as f:
            bench = json.load(f)["benchmarks"]
    except (OSError, ValueError, KeyError) as e:
        die(f"cannot read {path}: {e}")
    rows = []
    for b in bench:
        # aggregates: keep the median; raw repetitions: keep every iteration row (median taken below)
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        name = b.get("run_name", b["name"])
        impl = IMPLS.get(name.split("/")[0])
        args = dict(re.findall(r"(\w+):(\d+)", name))
        if impl is None or "ctx" not in args:
            continue
        rows.append({"impl": impl, "ctx": int(args["ctx"]), "shape": b.get("label", args.get("shape")),
                     "batch": args.get("batch"), "prefill": args.get("prefill"), "page": args.get("page"),
                     "ms": b["real_time"] * TO_MS[b.get("time_unit", "ns")],
                     "workspace_bytes": b.get("workspace_bytes")})
    df = pd.DataFrame(rows)
    if df.empty:
        die(f"no BM_Attention* results in {path}")
    keys = ["shape", "batch", "prefill", "page"]
    if len(df[keys].drop_duplicates()) > 1:
        die(f"{path} mixes several shape/batch/prefill/page settings; filter the benchmark to one")
    return df.groupby(["impl", "ctx"], as_index=False)[["ms", "workspace_bytes"]].median(), df.iloc[0][keys]


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="?", default=os.path.join(ROOT, "results", "reference", "attention",
                                                           "bench_attention_prefill.json"))
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", default=os.path.join(ROOT, "plots", "out", "attention_prefill"),
                     help="output path without extension (.png and .pdf are written); "
                          "default plots/out/attention_prefill")
    out.add_argument("--committed", action="store_true",
                     help="write the committed figure plots/attention_prefill.{png,pdf} (README's)")
    a = p.parse_args(argv)
    if a.committed:
        a.out = os.path.join(ROOT, "plots", "attention_prefill")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    df, setting = load(a.json)
    mode = "prefill" if setting["prefill"] == "1" else "decode"
    layout = "contiguous" if setting["page"] == "0" else f"paged/{setting['page']}"
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    for impl in [i for i in IMPLS.values() if i in set(df["impl"])]:
        part = df[df["impl"] == impl].sort_values("ctx")
        axes[0].plot(part["ctx"], part["ms"], marker="o", label=impl, color=COLORS[impl])
        axes[1].plot(part["ctx"], part["workspace_bytes"], marker="o", label=impl, color=COLORS[impl])
    for ax, ylabel, title in ((axes[0], "time (ms, median)", "Time vs context"),
                              (axes[1], "workspace_bytes", "Workspace vs context")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend()
    fig.suptitle(f"Attention {mode}, {setting['shape']}, batch {setting['batch']}, {layout}", fontsize=10)
    for ext in ("png", "pdf"):
        path = f"{a.out}.{ext}"
        fig.savefig(path, dpi=150)
        print("wrote", shown(path))
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
