#!/usr/bin/env python3
"""Speculative decoding with simulated acceptance: measured tokens per target pass
(acceptance_length) and speedup over the run's `none` point, against the expected
(1 - alpha^(k+1)) / (1 - alpha). Prints the table (with each point's deviation from the formula)
and writes <out>.png / <out>.pdf (default plots/out/speculative.*, untracked). Run with Debian's python3
(python3-matplotlib, python3-pandas):
  /usr/bin/python3 plots/speculative.py results/reference/speculative/simulated \
      --acceptance results/reference/speculative/acceptance
  # the same with --committed regenerates the committed plots/speculative.{png,pdf}
The first argument is a speculative_simulated.yaml run (its folder or its summary.csv; needs a `none`
point for the speedup); --acceptance adds a speculative_acceptance.yaml run (many samples) to the
tokens-per-pass panel. --table-only prints the tables and draws nothing."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _python  # noqa: E402

_python.require(["pandas"], __file__, __name__ == "__main__")
import pandas as pd  # noqa: E402

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError as e:  # the table is still printed
    plt = None
    print(f"speculative.py: no matplotlib ({e}; Debian: apt-get install python3-matplotlib, run with "
          f"{_python.SYSTEM_PYTHON}); printing the table only", file=sys.stderr)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_summary(path):
    """A run folder (its summary.csv) or a summary CSV file."""
    f = os.path.join(path, "summary.csv") if os.path.isdir(path) else path
    if not os.path.exists(f):
        sys.exit(f"speculative.py: error: {f}: no such file (give a run folder such as "
                 f"results/reference/speculative/simulated or its summary.csv)")
    return pd.read_csv(f)


def expected(alpha, k):
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def table(df, base_tpot=None, base_tput=None):
    sim = df[df["speculative.draft"] == "simulated"].copy()
    sim["expected"] = [expected(a, k) for a, k in zip(sim["speculative.alpha"], sim["speculative.k"])]
    sim["tokens_per_pass"] = sim["acceptance_length"]
    sim["deviation_pct"] = 100 * (sim["tokens_per_pass"] / sim["expected"] - 1)
    cols = ["speculative.alpha", "speculative.k", "num_drafts", "tokens_per_pass", "expected", "deviation_pct"]
    if base_tpot is not None:
        sim["speedup_tpot"] = base_tpot / sim["tpot_mean_ms"]
        sim["speedup_throughput"] = sim["output_throughput"] / base_tput
        cols += ["tpot_mean_ms", "speedup_tpot", "speedup_throughput", "draft_s", "verify_s"]
    return sim.sort_values(["speculative.alpha", "speculative.k"])[cols]


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("csv", help="speculative_simulated.yaml run: folder or summary.csv")
    p.add_argument("--acceptance", help="speculative_acceptance.yaml run: folder or summary.csv (optional)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", default=os.path.join(ROOT, "plots", "out", "speculative"),
                     help="output path without extension; default plots/out/speculative")
    out.add_argument("--committed", action="store_true", help="write the committed plots/speculative.{png,pdf}")
    out.add_argument("--table-only", action="store_true", help="print the tables, draw nothing")
    a = p.parse_args(argv)
    if a.committed:
        a.out = os.path.join(ROOT, "plots", "speculative")

    df = read_summary(a.csv)
    none = df[df["speculative.draft"] == "none"]
    pd.set_option("display.width", 200)
    if none.empty:  # tokens per pass only
        print(f"{a.csv}: no speculative.draft = none point, so no speedup")
        base_tpot = base_tput = None
    else:
        base_tpot, base_tput = none["tpot_mean_ms"].median(), none["output_throughput"].median()
        print(f"{a.csv}: none tpot_mean_ms {base_tpot:.2f}, output_throughput {base_tput:.2f} tok/s")
    sim = table(df, base_tpot, base_tput)
    print(f"max |deviation| {sim['deviation_pct'].abs().max():.2f} %")
    print(sim.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    acc = None
    if a.acceptance:
        acc = table(read_summary(a.acceptance))
        print(f"\n{a.acceptance}:")
        print(acc.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        print(f"max |deviation| {acc['deviation_pct'].abs().max():.2f} %")
    if plt is None or a.table_only:
        return
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    alphas = sorted(sim["speculative.alpha"].unique())
    colors = dict(zip(alphas, plt.cm.viridis([i / max(1, len(alphas) - 1) for i in range(len(alphas))])))
    for alpha in alphas:
        kk = [1 + i * 7 / 60 for i in range(61)]
        ax1.plot(kk, [expected(alpha, k) for k in kk], color=colors[alpha], lw=1, alpha=0.6)
        s = sim[sim["speculative.alpha"] == alpha]
        ax1.plot(s["speculative.k"], s["tokens_per_pass"], "o", color=colors[alpha], label=f"alpha {alpha}")
        if acc is not None:
            t = acc[acc["speculative.alpha"] == alpha]
            ax1.plot(t["speculative.k"], t["tokens_per_pass"], "x", color=colors[alpha], ms=8)
        if base_tpot is not None:
            ax2.plot(s["speculative.k"], s["speedup_tpot"], "o-", color=colors[alpha], label=f"alpha {alpha}")
    ax1.set(xlabel="k (draft tokens per step)", ylabel="tokens per target pass",
            title="measured (o smollm2, x tiny many samples) vs (1-a^(k+1))/(1-a)")
    ax1.set_xscale("log", base=2)
    ax1.legend(fontsize=8)
    ax2.axhline(1, color="grey", lw=0.8)
    ax2.set(xlabel="k (draft tokens per step)", ylabel="decode speedup (tpot none / tpot)",
            title="speedup over no speculation, batch 1 (simulated, not lossless)")
    ax2.set_xscale("log", base=2)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(f"{a.out}.{ext}", dpi=80)
    print("wrote", *(os.path.relpath(os.path.abspath(f"{a.out}.{e}")) for e in ("png", "pdf")))


if __name__ == "__main__":
    main(sys.argv[1:])
