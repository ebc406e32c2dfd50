#!/usr/bin/env python3
"""Plot ablate summary.csv files as PNG + PDF: the median over repeats, with min-max
error bars where a point has several repeats. Needs Debian's python3-matplotlib and
python3-pandas (run with /usr/bin/python3). Examples: plots/README.md."""
import argparse
import difflib
import os
import sys

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker as ticker
    import numpy as np
    import pandas as pd
except ImportError as e:
    sys.exit(f"plot.py: error: {e}; apt-get install python3-matplotlib python3-pandas, use /usr/bin/python3")


def die(msg):
    print(f"plot.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Plot ablate summary.csv files (median, min-max bars).")
    p.add_argument("csv", nargs="+", help="summary.csv file(s); several are concatenated")
    p.add_argument("--x", required=True, help="column for the x axis, e.g. workload.rate")
    p.add_argument("--y", required=True, action="append", help="metric column (repeatable)")
    p.add_argument("--hue", help="one line / bar group per distinct value, e.g. batching")
    p.add_argument("--kind", choices=["line", "bar"], default="line")
    p.add_argument("--where", action="append", default=[], metavar="COL=VALUE",
                   help="keep only rows where COL equals VALUE (repeatable)")
    for flag in ("--logx", "--logy", "--force"):  # --force: overwrite existing output files
        p.add_argument(flag, action="store_true")
    for opt in ("--title", "--xlabel", "--ylabel"):
        p.add_argument(opt)
    p.add_argument("--out", required=True, help="output path without extension (.png and .pdf are written)")
    a = p.parse_args(argv)
    if a.kind == "bar" and a.logx:
        die("--logx is not supported with --kind bar (the x axis is categorical)")
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


def aggregate(df, x, y, hue):
    """Median/min/max of y per (hue, x); warns when distinct sweep points get merged."""
    d = df.assign(_y=pd.to_numeric(df[y], errors="coerce")).dropna(subset=["_y", x])
    keys = ([hue] if hue else []) + [x]
    if "point" in d.columns and not d.empty:
        merged = d.groupby(keys, dropna=False)[["_source", "point"]].apply(
            lambda g: len(g.drop_duplicates())).max()
        if merged > 1:
            print(f"plot.py: warning: {y}: {merged} distinct sweep points share one x"
                  f"{'/hue' if hue else ''} value and are merged; use --hue or --where to separate them",
                  file=sys.stderr)
    g = d.groupby(keys, dropna=False)["_y"]
    return pd.DataFrame({"med": g.median(), "lo": g.min(), "hi": g.max(), "n": g.count()}).reset_index()


def series(df, args):
    """Yields (label, frame with x, med, lo, hi, n) for every y and hue value."""
    hues = sorted_values(df[args.hue]) if args.hue else [None]
    for y in args.y:
        agg = aggregate(df, args.x, y, args.hue)
        if agg.empty:
            die(f"column '{y}' has no numeric values")
        for h in hues:
            part = agg[agg[args.hue] == h] if args.hue else agg
            if part.empty:
                continue
            if h is None:
                yield y, part
            else:
                yield (fmt(h) if len(args.y) == 1 else f"{y} ({args.hue}={fmt(h)})"), part


def error_bars(part):
    """Asymmetric min-max error, NaN (not drawn) where a point has a single repeat."""
    many = part["n"].to_numpy() > 1
    lo = np.where(many, part["med"] - part["lo"], np.nan)
    hi = np.where(many, part["hi"] - part["med"], np.nan)
    return np.vstack([lo, hi]) if many.any() else None


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
    ax.set_xlabel(args.xlabel or args.x)
    ax.set_ylabel(args.ylabel or ", ".join(args.y))
    ax.set_title(args.title or f"{', '.join(args.y)} vs {args.x}" + (f" by {args.hue}" if args.hue else ""))
    ax.grid(True, axis="y" if args.kind == "bar" else "both", alpha=0.3)
    if len(all_series) > 1 or args.hue:
        ax.legend(title=args.hue if len(args.y) == 1 else None, fontsize="small")
    return fig


def save_atomic(fig, path):
    """Writes to a temporary file in the same folder, then renames it over path."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    ext = os.path.splitext(name)[1][1:]
    try:  # no CreationDate in the PDF, so the same data gives the same file
        fig.savefig(tmp, format=ext, dpi=150, metadata={"CreationDate": None} if ext == "pdf" else {})
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
    for col in [args.x, *args.y] + ([args.hue] if args.hue else []):
        check_column(df, col)
    df = apply_where(df, args.where)
    fig = draw(df, args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for o in outs:
        save_atomic(fig, o)
    plt.close(fig)
    print("\n".join(outs))


if __name__ == "__main__":
    main()
