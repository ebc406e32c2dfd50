#!/usr/bin/env python3
"""Plot ablate summary.csv files as PNG + PDF: each point's centre over repeats (the median; the
mean for count metrics, as plots/stats.py decides) with its 95 % bootstrap confidence interval as
error bars, computed by plots/stats.py (no bar where a point has fewer than 3 repeats).
--ratio-to KEY=VALUE plots each group's ratio to the KEY=VALUE group instead, with the ratio's
bootstrap CI. The figure's caption, and the PDF/PNG metadata, say what the bars are.
Needs Debian's python3-matplotlib, python3-pandas and python3-scipy (/usr/bin/python3).
Examples: plots/README.md."""
import argparse
import difflib
import os
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _python  # noqa: E402

_python.require(["numpy", "pandas", "matplotlib", "scipy"], __file__, __name__ == "__main__")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import stats  # noqa: E402


def die(msg):
    print(f"plot.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Plot ablate summary.csv files (centre over repeats, 95% bootstrap "
                                "CI bars from plots/stats.py).")
    p.add_argument("csv", nargs="+", help="summary.csv file(s); several are concatenated")
    p.add_argument("--x", required=True, help="column for the x axis, e.g. workload.rate")
    p.add_argument("--y", required=True, action="append", help="metric column (repeatable)")
    p.add_argument("--hue", help="one line / bar group per distinct value, e.g. batching")
    p.add_argument("--kind", choices=["line", "bar"], default="line")
    p.add_argument("--where", action="append", default=[], metavar="COL=VALUE",
                   help="keep only rows where COL equals VALUE (repeatable)")
    p.add_argument("--ratio-to", action="append", default=[], metavar="KEY=VALUE",
                   help="plot each group's ratio to the KEY=VALUE group (same x/hue otherwise) with its CI")
    for flag in ("--logx", "--logy", "--force"):  # --force: overwrite existing output files
        p.add_argument(flag, action="store_true")
    for opt in ("--title", "--xlabel", "--ylabel"):
        p.add_argument(opt)
    p.add_argument("--out", required=True, help="output path without extension (.png and .pdf are written)")
    a = p.parse_args(argv)
    if a.kind == "bar" and a.logx:
        die("--logx is not supported with --kind bar (the x axis is categorical)")
    try:
        a.baseline = stats.parse_key_values(a.ratio_to, "--ratio-to")
    except stats.StatsError as e:
        die(str(e))
    return a


def read(path):
    try:
        return pd.read_csv(path).assign(_source=path)  # _source tells points of different runs apart
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        die(f"cannot read {path}: {e}")


def check_column(df, col):
    if col in df.columns:
        return
    cols = [c for c in df.columns if c != "_source"]
    close = difflib.get_close_matches(col, cols, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    die(f"unknown column '{col}'{hint}\navailable columns: {', '.join(cols)}")


def apply_where(df, clauses):
    for clause in clauses:
        col, sep, val = clause.partition("=")
        if not sep:
            die(f"--where expects COL=VALUE, got '{clause}'")
        check_column(df, col)
        if pd.api.types.is_numeric_dtype(df[col]) and pd.notna(pd.to_numeric(val, errors="coerce")):
            df = df[df[col] == float(val)]
        else:
            df = df[df[col].astype(str) == val]
    if df.empty:
        die("no rows left after --where filters")
    return df


def sorted_values(col):
    numeric = pd.api.types.is_numeric_dtype(col)
    return sorted(col.dropna().unique(), key=None if numeric else str)


def fmt(v):
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def merge_warning(d, keys, y):
    if "point" in d.columns and not d.empty:
        merged = d.groupby(keys, dropna=False)[["_source", "point"]].apply(
            lambda g: len(g.drop_duplicates())).max()
        if merged > 1:
            print(f"plot.py: warning: {y}: {merged} distinct sweep points share one x/hue value and are merged; "
                  f"use --hue or --where to separate them", file=sys.stderr)


def group_keys(args, extra=()):
    return ([args.hue] if args.hue else []) + [k for k in extra if k not in (args.x, args.hue)] + [args.x]


def aggregate(df, y, keys):
    """Per group of `keys`: centre and 95 % bootstrap CI of y over its rows (plots/stats.py).
    Returns (frame with keys, med, lo, hi, n; values per group in _vals)."""
    d = df.assign(_y=pd.to_numeric(df[y], errors="coerce")).dropna(subset=["_y", keys[-1]])
    merge_warning(d, keys, y)
    kind = stats.centre_kind(y)
    recs = []
    for key, part in d.groupby(keys if len(keys) > 1 else keys[0], dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        iv = stats.ci(part["_y"], kind)
        recs.append({**dict(zip(keys, key)), "med": iv.centre, "lo": np.nan if iv.lo is None else iv.lo,
                     "hi": np.nan if iv.hi is None else iv.hi, "n": iv.n, "_vals": part["_y"].to_numpy()})
    return pd.DataFrame(recs, columns=[*keys, "med", "lo", "hi", "n", "_vals"])


def ratios(agg, y, keys, baseline):
    """Each non-baseline group's ratio to its baseline group (plots/stats.py's ratio_ci)."""
    refs, is_base = stats.reference_groups(agg[keys].reset_index(drop=True), baseline)
    kind = stats.centre_kind(y)
    recs = []
    for i, (ref, base) in enumerate(zip(refs, is_base)):
        if base or ref is None:
            continue
        r = stats.ratio_ci(agg["_vals"].iloc[i], agg["_vals"].iloc[ref], kind)
        if r.centre is None:
            continue
        recs.append({**{k: agg[k].iloc[i] for k in keys}, "med": r.centre, "lo": np.nan if r.lo is None else r.lo,
                     "hi": np.nan if r.hi is None else r.hi, "n": r.n})
    return pd.DataFrame(recs, columns=[*keys, "med", "lo", "hi", "n"])


def series(df, args):
    """Yields (label, frame with x, med, lo, hi, n) for every y and hue (and --ratio-to key) value."""
    extra = [c for c, _ in args.baseline]
    keys = group_keys(args, extra)
    split = [k for k in keys if k != args.x]
    for y in args.y:
        agg = aggregate(df, y, keys)
        if agg.empty:
            die(f"column '{y}' has no numeric values")
        if args.baseline:
            if not stats.reference_groups(agg[keys].reset_index(drop=True), args.baseline)[1].any():
                avail = "; ".join(f"{c} has {', '.join(stats.distinct(agg[c]))}" for c, _ in args.baseline)
                die(f"--ratio-to {', '.join(f'{c}={v}' for c, v in args.baseline)} matches no rows ({avail})")
            agg = ratios(agg, y, keys, args.baseline)
            if agg.empty:
                die(f"--ratio-to: no group has a baseline group to compare with for '{y}'")
        if not split:
            yield y, agg
            continue
        for key, part in agg.groupby(split if len(split) > 1 else split[0], sort=False, dropna=False):
            key = key if isinstance(key, tuple) else (key,)
            name = ", ".join(fmt(v) if (k == args.hue and len(split) == 1) else f"{k}={fmt(v)}"
                             for k, v in zip(split, key))
            yield (name if len(args.y) == 1 else f"{y} ({name})"), part


def error_bars(part):
    """Asymmetric CI error, NaN (not drawn) where a point has no interval (n < 3)."""
    has = part["lo"].notna().to_numpy() & part["hi"].notna().to_numpy()
    lo = np.where(has, part["med"] - part["lo"], np.nan)
    hi = np.where(has, part["hi"] - part["med"], np.nan)
    return np.vstack([lo, hi]) if has.any() else None


def caption(args):
    kinds = sorted({stats.centre_kind(y) for y in args.y})
    centre = " / ".join(kinds)
    how = (f"{stats.CONFIDENCE:.0%} bootstrap CI (BCa or percentile, {stats.N_RESAMPLES} resamples, seed "
           f"{stats.SEED}; plots/stats.py); no bar where n < 3")
    if args.baseline:
        base = ", ".join(f"{c}={v}" for c, v in args.baseline)
        return f"ratio of each group's {centre} over repeats to {base}'s; bars: the ratio's {how}"
    return f"{centre} over repeats; bars: {how}"


def draw(df, args):
    categorical = args.kind == "bar" or not pd.api.types.is_numeric_dtype(df[args.x])
    xs = sorted_values(df[args.x])
    pos = {v: i for i, v in enumerate(xs)}
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    all_series = list(series(df, args))
    # Bars: each x category is split only among the series that have a value there.
    present = {v: [i for i, (_, p) in enumerate(all_series) if (p[args.x] == v).any()] for v in xs}
    width = 0.8 / max([len(s) for s in present.values()] + [1])
    for i, (label, part) in enumerate(all_series):
        at = (part[args.x].map(pos) if categorical else part[args.x]).to_numpy(dtype=float)
        order = np.argsort(at)
        part, at = part.iloc[order], at[order]
        err = error_bars(part)
        if args.kind == "line":
            ax.errorbar(at, part["med"], yerr=err, marker="o", markersize=4, capsize=3, label=label)
        else:
            slot = [(present[v].index(i) - (len(present[v]) - 1) / 2) * width for v in part[args.x]]
            ax.bar(at + np.array(slot), part["med"], width, yerr=err, capsize=3, label=label,
                   color=f"C{i}", edgecolor="black", linewidth=0.5)
    if args.logx:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    if categorical or len(xs) <= 12:  # few numeric sweep values: tick exactly at them
        ax.set_xticks(range(len(xs)) if categorical else [float(v) for v in xs])
        ax.set_xticklabels([fmt(v) for v in xs])
    if args.logy:
        ax.set_yscale("log")
    base = ", ".join(f"{c}={v}" for c, v in args.baseline)
    if args.baseline:
        ax.axhline(1, color="grey", linewidth=0.8, zorder=0)
    kinds = " / ".join(sorted({stats.centre_kind(y) for y in args.y}))
    ax.set_xlabel(args.xlabel or args.x)
    ax.set_ylabel(args.ylabel or (f"ratio to {base}" if args.baseline else f"{', '.join(args.y)} ({kinds})"))
    by_hue = args.hue and args.hue not in [c for c, _ in args.baseline]
    ax.set_title(args.title or (f"{', '.join(args.y)}" + (f" / {base}" if args.baseline else "") +
                                f" vs {args.x}" + (f" by {args.hue}" if by_hue else "")))
    fig.supxlabel(textwrap.fill(caption(args), 110), fontsize=7, color="dimgrey")
    ax.grid(True, axis="y" if args.kind == "bar" else "both", alpha=0.3)
    if len(all_series) > 1 or args.hue:
        ax.legend(title=args.hue if len(args.y) == 1 else None, fontsize="small")
    return fig


def save_atomic(fig, path, note=""):
    """Writes to a temporary file in the same folder, then renames it over path; `note` goes into
    the PDF's Subject / the PNG's Description."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    ext = os.path.splitext(name)[1][1:]
    try:  # no CreationDate in the PDF, so the same data gives the same file
        meta = {"CreationDate": None, "Subject": note} if ext == "pdf" else {"Description": note}
        fig.savefig(tmp, format=ext, dpi=150, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv=None):
    args = parse_args(argv)
    outs = [args.out + ".png", args.out + ".pdf"]
    existing = [o for o in outs if os.path.exists(o)]
    if existing and not args.force:
        die(f"{', '.join(existing)} already exist(s); pass --force to overwrite")
    df = pd.concat([read(path) for path in args.csv], ignore_index=True, sort=False)
    for col in [args.x, *args.y] + ([args.hue] if args.hue else []) + [c for c, _ in args.baseline]:
        check_column(df, col)
    df = apply_where(df, args.where)
    fig = draw(df, args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    note = caption(args)
    for o in outs:
        save_atomic(fig, o, note)
    plt.close(fig)
    print(f"plot.py: note: {note}", file=sys.stderr)
    print("\n".join(outs))


if __name__ == "__main__":
    main()
