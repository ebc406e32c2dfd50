#!/usr/bin/env python3
"""The figures of README's "What the ablations show", from the committed reference CSVs
(results/reference/batching/, batching_rate/, kv/, prefix/, precision/, precision_kv/,
precision_grid/, gguf_types/). A point's repeats are drawn as their median with its 95 % bootstrap interval
(plots/stats.py; the precision_grid heatmaps show medians only, the README table the intervals). Writes small PNGs
into --out DIR (default plots/out/, untracked); --committed writes the README's committed plots/*.png.
Run with Debian's python3 (python3-matplotlib, python3-pandas):
  /usr/bin/python3 plots/ablations.py               # -> plots/out/*.png
  /usr/bin/python3 plots/ablations.py --committed   # regenerates plots/batching_*.png, kv_*_per_layout.png,
                                                    # prefix_cache.png, precision_weights{,_avx512-bf16}.png, precision_kv.png,
                                                    # precision_grid.png, gguf_types.png"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _python  # noqa: E402

_python.require(["pandas", "matplotlib", "scipy"], __file__, __name__ == "__main__")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import stats  # noqa: E402

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


def device_of(folder):
    """The `device` line of a reference run's provenance.yaml (e.g. "AMD EPYC (avx2 kernels)")."""
    path = os.path.join(REF, folder, "provenance.yaml")
    with open(path) as f:
        for line in f:
            if line.startswith("device:"):
                return line.split(":", 1)[1].strip().strip('"')
    sys.exit(f"ablations.py: no device line in {path}")


def save(fig, name):
    path = os.path.join(OUT, name + ".png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print("wrote", shown(path))


COLORS = {"static": "tab:red", "continuous": "tab:blue"}


def per_point(df, metric, keys):
    """One row per sweep point: the keys, the median of `metric` over repeats, its 95 % interval
    (lo/hi; the centre itself below 3 repeats) and n."""
    rows = []
    for key, part in df.groupby(keys[0] if len(keys) == 1 else keys, sort=False):
        iv = stats.ci(part[metric].to_numpy(dtype=float))
        lo = iv.lo if iv.lo is not None else iv.centre
        hi = iv.hi if iv.hi is not None else iv.centre
        rows.append(dict(zip(keys, key if isinstance(key, tuple) else (key,)), centre=iv.centre, lo=lo, hi=hi, n=iv.n))
    return pd.DataFrame(rows)


def bars(ax, labels, g, colors, fmt):
    yerr = [g["centre"] - g["lo"], g["hi"] - g["centre"]]
    ax.bar(labels, g["centre"], color=colors, yerr=yerr, capsize=3, ecolor="black")
    for i, (v, hi) in enumerate(zip(g["centre"], g["hi"])):
        ax.text(i, hi, fmt(v), ha="center", va="bottom", fontsize=8)


def n_text(g):
    ns = sorted(set(int(n) for n in g["n"]))
    return f"median of {ns[0]} repeats, bars: 95 % CI" if len(ns) == 1 else f"medians of {ns} repeats, bars: 95 % CI"


def offline_figure():
    """Output throughput and step count per policy (median over repeats, 95 % interval)."""
    df = read("batching", "summary.csv")
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2), constrained_layout=True)
    for ax, metric, label in ((axes[0], "output_throughput", "output tokens/s"), (axes[1], "steps", "engine steps")):
        g = per_point(df, metric, ["batching"])
        bars(ax, g["batching"], g, [COLORS.get(b) for b in g["batching"]],
             (lambda v: f"{v:.1f}") if metric == "output_throughput" else (lambda v: f"{v:.0f}"))
        ax.set_ylabel(label)
    n, b = int(df["workload.requests"].iloc[0]), int(df["scheduler.max_batch"].iloc[0])
    fig.suptitle(f"Static vs continuous batching: {n} Azure conv requests, batch {b} ({n_text(g)})", fontsize=9)
    save(fig, "batching_offline")


def rate_lines(ax, df, metric, style="-", label_suffix=""):
    for b, part in df.groupby("batching"):
        g = per_point(part, metric, ["workload.rate"]).sort_values("workload.rate")
        ax.errorbar(g["workload.rate"], g["centre"], yerr=[g["centre"] - g["lo"], g["hi"] - g["centre"]], fmt=style,
                    marker="o", capsize=3, label=f"{b}{label_suffix}", color=COLORS.get(b))
    return g


def rate_figures():
    df = read("batching_rate", "summary.csv")
    fig, ax = plt.subplots(figsize=(5, 3.4), constrained_layout=True)
    g = rate_lines(ax, df, "output_throughput")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("request rate (req/s, Poisson)")
    ax.set_ylabel("output tokens/s")
    ax.set_title(f"Throughput vs request rate\n({n_text(g)})", fontsize=9)
    ax.legend()
    save(fig, "batching_throughput_vs_rate")

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), constrained_layout=True)
    for ax, metric, label in ((axes[0], "ttft", "TTFT"), (axes[1], "tpot", "TPOT")):
        for q, style in (("median", "-"), ("p99", "--")):
            g = rate_lines(ax, df, f"{metric}_{q}_ms", style, f" {q}")
        ax.set_xscale("log", base=2)
        if metric == "ttft":
            ax.set_yscale("log")
        ax.set_xlabel("request rate (req/s, Poisson)")
        ax.set_ylabel(f"{label} (ms)")
        ax.set_title(f"{label} p50 / p99 vs rate ({n_text(g)})", fontsize=8)
    axes[0].legend(fontsize=7)
    save(fig, "batching_latency_vs_rate")


def layout_label(row):
    return "contiguous" if row["kv.layout"] == "contiguous" else f"paged/{int(row['kv.block_size'])}"


def kv_figures():
    df = read("kv", "summary.csv")
    df["layout"] = df.apply(layout_label, axis=1)
    order = ["contiguous"] + sorted({lay for lay in df["layout"] if lay != "contiguous"}, key=lambda x: int(x.split("/")[1]))
    for metric, ylabel, name, pct in (("kv_waste", "KV waste (time-weighted)", "kv_waste_per_layout", True),
                                      ("peak_concurrency", "peak concurrent sequences", "kv_concurrency_per_layout", False)):
        g = per_point(df, metric, ["layout"]).set_index("layout").loc[order].reset_index()
        if pct:
            g[["centre", "lo", "hi"]] *= 100
        fig, ax = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
        bars(ax, g["layout"], g, ["tab:red" if lay == "contiguous" else "tab:blue" for lay in g["layout"]],
             (lambda v: f"{v:.1f}%") if pct else (lambda v: f"{v:.0f}"))
        ax.set_ylabel(ylabel + (" (%)" if pct else ""))
        ax.set_title(f"{ylabel}, KV budget {df['kv.memory_mb'].iloc[0]:g} MiB\n({n_text(g)})", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        save(fig, name)


def errorbar_bars(ax, x, g, color, label, width):
    ax.bar(x, g["centre"], width, color=color, label=label,
           yerr=[g["centre"] - g["lo"], g["hi"] - g["centre"]], capsize=3, ecolor="black")


def prefix_label(row):
    turns = row.get("workload.conversation.turns", 1)
    if pd.notna(turns) and int(turns) > 1:
        return f"{int(turns)}-turn chat"
    return f"prefix {int(row['workload.shared_prefix.tokens'])}"


def prefix_figure():
    """TTFT, output throughput and KV memory per sequence, prefix cache off vs on, per workload."""
    df = read("prefix", "summary.csv").sort_values(["point", "repeat"])  # rows are in run order
    df["workload"] = df.apply(prefix_label, axis=1)
    df["kv_per_seq_mib"] = df["kv_used_peak_bytes"] / df["peak_concurrency"] / 2**20
    order = list(dict.fromkeys(df["workload"]))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), constrained_layout=True)
    for ax, metric, label in ((axes[0], "ttft_median_ms", "TTFT p50 (ms)"),
                              (axes[1], "output_throughput", "output tokens/s"),
                              (axes[2], "kv_per_seq_mib", "KV at the peak per running sequence (MiB)")):
        for i, (cache, color) in enumerate((("off", "tab:red"), ("on", "tab:blue"))):
            g = per_point(df[df["kv.prefix_cache"] == cache], metric, ["workload"]).set_index("workload").loc[order]
            errorbar_bars(ax, [j + (i - 0.5) * 0.38 for j in range(len(order))], g, color, f"prefix cache {cache}", 0.38)
        ax.set_xticks(range(len(order)), order, fontsize=8)
        ax.set_ylabel(label, fontsize=8)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Prefix caching: {int(df['workload.requests'].iloc[0])} requests (chats), paged blocks of "
                 f"{int(df['kv.block_size'].iloc[0])} ({n_text(g)})", fontsize=9)
    save(fig, "prefix_cache")


def precision_weights_figure(folder="precision", name="precision_weights"):
    """Output throughput against the KL divergence from fp32, per weight dtype and batch (one host's
    run: the CPU kernels differ by instruction set, so each host kind has its own folder)."""
    df = read(folder, "summary.csv").sort_values(["point", "repeat"])
    device = device_of(folder)
    fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
    markers = {1: "o", 8: "s"}
    colors = {"fp32": "black", "bf16": "tab:blue", "fp16": "tab:green", "q8_0": "tab:orange", "native": "tab:red"}
    for (dtype, batch), part in df.groupby(["dtype", "scheduler.max_batch"], sort=False):
        g = per_point(part, "output_throughput", ["dtype"])
        kl = max(float(part["quality_kl"].median()), 1e-8)  # fp32's 0 drawn at the axis floor
        ax.errorbar([kl], g["centre"], yerr=[g["centre"] - g["lo"], g["hi"] - g["centre"]], marker=markers.get(int(batch), "^"),
                    color=colors.get(dtype), capsize=3, linestyle="none",
                    label=f"{dtype}, batch {int(batch)}, {part['weights_bytes'].iloc[0] / 1e6:.0f} MB")
    ax.set_xscale("log")
    ax.set_xlabel("KL divergence from fp32 (nats; fp32 drawn at 1e-8)")
    ax.set_ylabel("output tokens/s")
    ax.legend(fontsize=7)
    ax.set_title(f"Weight precision: speed against quality\n{device} ({n_text(g)})", fontsize=9)
    save(fig, name)


def precision_kv_figure():
    """Per kv.dtype: output throughput, peak concurrency and bytes per token from one KV budget."""
    df = read("precision_kv", "summary.csv").sort_values(["point", "repeat"])
    steps = read("precision_kv", "steps.csv")
    stored = steps[steps["kv_tokens_stored"] > 0]
    per_token = (stored["kv_used_bytes"] / stored["kv_tokens_stored"]).groupby(stored["point"]).median()
    df["kv_bytes_per_token"] = df["point"].map(per_token)
    order = list(dict.fromkeys(df["kv.dtype"]))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), constrained_layout=True)
    for ax, metric, label, fmt in ((axes[0], "output_throughput", "output tokens/s", lambda v: f"{v:.1f}"),
                                   (axes[1], "peak_concurrency", "peak running sequences", lambda v: f"{v:.0f}"),
                                   (axes[2], "kv_bytes_per_token", "KV bytes per token", lambda v: f"{v:.0f}")):
        g = per_point(df, metric, ["kv.dtype"]).set_index("kv.dtype").loc[order].reset_index()
        bars(ax, g["kv.dtype"], g, ["tab:red" if d == "fp32" else "tab:blue" for d in g["kv.dtype"]], fmt)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    kl = df.groupby("kv.dtype", sort=False)["quality_kl"].median().loc[order]
    axes[0].set_title("KL from fp32: " + ", ".join(f"{d} {v:.1e}" for d, v in kl.items()), fontsize=7)
    fig.suptitle(f"KV precision: {int(df['workload.requests'].iloc[0])} x {int(df['workload.prompt_len.value'].iloc[0])}-token "
                 f"prompts, {df['kv.memory_mb'].iloc[0]:g} MiB of KV, {df['dtype'].iloc[0]} matrices ({n_text(g)})", fontsize=9)
    save(fig, "precision_kv")


def precision_grid_figure():
    """dtype x kv.dtype: output throughput against the fp32/fp32 pair, and KL from it (medians)."""
    df = read("precision_grid", "summary.csv").sort_values(["point", "repeat"])  # the config's order
    rows, cols = list(dict.fromkeys(df["dtype"])), list(dict.fromkeys(df["kv.dtype"]))
    med = df.groupby(["dtype", "kv.dtype"])[["output_throughput", "quality_kl"]].median()
    n = int(df.groupby(["dtype", "kv.dtype"]).size().min())
    base = med.loc[("fp32", "fp32"), "output_throughput"]
    speed = med["output_throughput"].unstack().loc[rows, cols] / base
    kl = med["quality_kl"].unstack().loc[rows, cols]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    positive = kl.values[kl.values > 0]
    kl_norm = matplotlib.colors.LogNorm(vmin=positive.min() / 2, vmax=positive.max()) if positive.size else None
    for ax, grid, title, text, cmap, norm in (
            (axes[0], speed, f"output tokens/s vs fp32/fp32 ({base:.1f} tok/s)", lambda v: f"{v:.2f}x", "Blues", None),
            (axes[1], kl, "KL from fp32/fp32 (nats, log colour)", lambda v: "0" if v == 0 else f"{v:.1e}", "Reds", kl_norm)):
        values = grid.values.astype(float)
        if norm is not None:
            values = values.clip(min=norm.vmin)  # 0 (the baseline itself) at the lightest colour
        image = ax.imshow(values, cmap=cmap, norm=norm, aspect="auto")
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                dark = image.norm(values[i, j]) > 0.6
                ax.text(j, i, text(grid.loc[r, c]), ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_xticks(range(len(cols)), cols, fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_xlabel("kv.dtype", fontsize=8)
        ax.set_ylabel("dtype (weights)", fontsize=8)
        ax.set_title(title, fontsize=8)
    fig.suptitle(f"Weights x KV precision, real SmolLM2-135M, {df['kv.memory_mb'].iloc[0]:g} MiB of KV "
                 f"(median of {n} repeats)", fontsize=9)
    save(fig, "precision_grid")


def gguf_types_figure():
    """Per llama.cpp file type: native's output throughput (and fp32's) against the bits a weight
    native holds, and the file's perplexity on the prompts."""
    df = read("gguf_types", "summary.csv").sort_values(["point", "repeat"])
    df["file"] = df["model.gguf"].str.extract(r"Instruct\.(\w+?)(?:\.requant)?\.gguf$", expand=False)
    order = list(dict.fromkeys(df["file"]))
    native, fp32 = df[df["dtype"] == "native"], df[df["dtype"] == "fp32"]
    g = per_point(native, "output_throughput", ["file"]).set_index("file").loc[order].reset_index()
    f = per_point(fp32, "output_throughput", ["file"]).set_index("file").loc[order].reset_index()
    bits = native.groupby("file")["bits_per_weight"].median().loc[order]
    ppl = fp32.groupby("file")["perplexity"].median().loc[order]
    kl = native.groupby("file")["quality_kl"].median().loc[order]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    ax = axes[0]
    ax.errorbar(bits, g["centre"], yerr=[g["centre"] - g["lo"], g["hi"] - g["centre"]], marker="o", color="tab:red",
                linestyle="none", capsize=3, label="native (the file's blocks)")
    base = float(fp32["output_throughput"].median())
    ax.axhline(base, color="black", linestyle="--", linewidth=1)
    ax.text(bits.min(), base, f" fp32 (each file dequantized at load, 32 bits): {base:.0f} tok/s", va="bottom", fontsize=7)
    for i, (name, x, y) in enumerate(zip(order, bits, g["centre"])):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 8 if i % 2 else -12), fontsize=7)
    ax.set_ylim(0, g["hi"].max() * 1.15)
    ax.set_xlabel("bits a weight as native holds them (matrices, LM head included)")
    ax.set_ylabel("output tokens/s, batch 1")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"Speed against size ({n_text(g)})", fontsize=9)
    ax = axes[1]
    ax.bar(order, ppl, color="tab:gray")
    for i, (p_, k) in enumerate(zip(ppl, kl)):
        ax.text(i, p_, f"{p_:.0f}\nKL {k:.1e}", ha="center", va="bottom", fontsize=6)
    ax.set_ylabel("perplexity on the prompts (fp32)")
    if ppl.max() > 20 * ppl.min():  # a spoilt file (TQ2_0's ternary matrices) beside good ones
        ax.set_yscale("log")
    ax.tick_params(axis="x", labelsize=7, rotation=30)
    ax.set_title("Each file's own quality; KL: native from the same file in fp32", fontsize=9)
    fig.suptitle("llama.cpp's file types, real SmolLM2-135M requantized from its Q4_1 file (CPU, one thread)", fontsize=9)
    save(fig, "gguf_types")


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
    prefix_figure()
    precision_weights_figure()
    precision_weights_figure("precision_avx512-bf16", "precision_weights_avx512-bf16")
    precision_kv_figure()
    precision_grid_figure()
    gguf_types_figure()


if __name__ == "__main__":
    main(sys.argv[1:])
