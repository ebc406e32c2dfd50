#!/usr/bin/env python3
"""The figures of README's "What the ablations show", from the committed reference CSVs
(results/reference/batching/, results/reference/batching_rate/, results/reference/kv/). Writes small PNGs
into --out DIR (default plots/out/, untracked); --committed writes the README's committed plots/*.png.
Run with Debian's python3 (python3-matplotlib, python3-pandas):
  /usr/bin/python3 plots/ablations.py               # -> plots/out/*.png
  /usr/bin/python3 plots/ablations.py --committed   # regenerates plots/batching_*.png, plots/kv_*_per_layout.png"""
import argparse
import os
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
REF = os.path.join(ROOT, "results", "reference")
OUT = os.path.join(ROOT, "plots", "out")  # main() sets it from --out / --committed


def read(*parts):
    path = os.path.join(REF, *parts)
    if not os.path.exists(path):
        sys.exit(f"ablations.py: missing {path}")
    return pd.read_csv(path)


def save(fig, name):
    path = os.path.join(OUT, name + ".png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print("wrote", shown(path))


COLORS = {"static": "tab:red", "continuous": "tab:blue"}


def offline_figure():
    """Output throughput and step count per policy, one bar pair per committed offline run."""
    df = read("batching", "summary.csv")
    steps = read("batching", "steps.csv").groupby("point").size()
    df["steps"] = df["point"].map(steps)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2), constrained_layout=True)
    for ax, metric, label in ((axes[0], "output_throughput", "output tokens/s"), (axes[1], "steps", "engine steps")):
        vals = df[metric]
        ax.bar(df["batching"], vals, color=[COLORS.get(b) for b in df["batching"]])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.1f}" if metric == "output_throughput" else f"{v:.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(label)
    n, b = int(df["workload.requests"].iloc[0]), int(df["scheduler.max_batch"].iloc[0])
    fig.suptitle(f"Static vs continuous batching: {n} Azure conv requests, batch {b}", fontsize=9)
    save(fig, "batching_offline")


def rate_figures():
    df = read("batching_rate", "summary.csv")
    fig, ax = plt.subplots(figsize=(5, 3.4), constrained_layout=True)
    for b, part in df.groupby("batching"):
        part = part.sort_values("workload.rate")
        ax.plot(part["workload.rate"], part["output_throughput"], marker="o", label=b, color=COLORS.get(b))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("request rate (req/s, Poisson)")
    ax.set_ylabel("output tokens/s")
    ax.set_title("Throughput vs request rate")
    ax.legend()
    save(fig, "batching_throughput_vs_rate")

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), constrained_layout=True)
    for ax, metric, label in ((axes[0], "ttft", "TTFT"), (axes[1], "tpot", "TPOT")):
        for b, part in df.groupby("batching"):
            part = part.sort_values("workload.rate")
            for q, style in (("median", "-"), ("p99", "--")):
                ax.plot(part["workload.rate"], part[f"{metric}_{q}_ms"], style, marker="o", label=f"{b} {q}",
                        color=COLORS.get(b))
        ax.set_xscale("log", base=2)
        if metric == "ttft":
            ax.set_yscale("log")
        ax.set_xlabel("request rate (req/s, Poisson)")
        ax.set_ylabel(f"{label} (ms)")
        ax.set_title(f"{label} p50 / p99 vs rate")
    axes[0].legend(fontsize=7)
    save(fig, "batching_latency_vs_rate")


def layout_label(row):
    return "contiguous" if row["kv.layout"] == "contiguous" else f"paged/{int(row['kv.block_size'])}"


def kv_figures():
    df = read("kv", "summary.csv")
    df["layout"] = df.apply(layout_label, axis=1)
    order = ["contiguous"] + [f"paged/{b}" for b in sorted(df.loc[df["kv.layout"] == "paged", "kv.block_size"].astype(int))]
    df = df.set_index("layout").loc[order].reset_index()
    colors = ["tab:red" if lay == "contiguous" else "tab:blue" for lay in df["layout"]]
    for metric, ylabel, name, pct in (("kv_waste", "KV waste (time-weighted)", "kv_waste_per_layout", True),
                                      ("peak_concurrency", "peak concurrent sequences", "kv_concurrency_per_layout", False)):
        fig, ax = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
        vals = df[metric] * (100 if pct else 1)
        ax.bar(df["layout"], vals, color=colors)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.1f}%" if pct else f"{v:.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(ylabel + (" (%)" if pct else ""))
        ax.set_title(f"{ylabel}, KV budget {df['kv.memory_mb'].iloc[0]:g} MiB")
        ax.tick_params(axis="x", labelsize=8)
        save(fig, name)


def main(argv):
    global OUT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", default=OUT, metavar="DIR", help="folder for the PNGs (default plots/out/)")
    out.add_argument("--committed", action="store_true", help="write the committed figures in plots/")
    a = p.parse_args(argv)
    OUT = os.path.join(ROOT, "plots") if a.committed else a.out
    os.makedirs(OUT, exist_ok=True)
    kv_figures()
    offline_figure()
    rate_figures()


if __name__ == "__main__":
    main(sys.argv[1:])
