#!/usr/bin/env python3
"""The comparison table of one or more ablate run folders: per group of rows (the swept keys), each
metric's centre with its 95 % bootstrap CI over repeats, and the ratio to a baseline group with its
CI, marked `*` when that CI excludes 1. Statistics come from plots/stats.py (centre per metric,
BCa/percentile, seed, "n < 3: no interval"); plots/README.md has examples.

  compare.py RUN_DIR... [--baseline KEY=VALUE] [--metrics M1,M2,...] [--format markdown|csv|latex]
             [--out FILE [--force]] [--vary COL ...] [--include-interrupted] [--within-run]

RUN_DIR is a results folder (summary.csv, provenance.yaml, config.yaml, requests.csv) or a
summary CSV file. Groups: the config columns whose values differ between the rows compared, plus
the --vary columns that differ (`--vary run` splits rows by folder: an A/A of two runs). The
baseline of a group is the group that matches KEY=VALUE and equals it on every other key, so
`--baseline batching=static` over a rate sweep gives each policy's ratio at each rate.

Refuses (exit 2) to mix rows whose build or machine differ (build_commit, git_commit, git_dirty,
device, backend, threads, compiler, build_type, ablate_version; and, between runs, the config's
backend, threads, dtype and model.*) unless each intended difference is named with --vary
(git_commit and build_commit stand for each other); every difference seen is listed, accepted or
not. A folder whose provenance.yaml says `status: interrupted` is refused unless
--include-interrupted. Errors (missing folder, unknown metric or column, a baseline matching no
rows) exit 2 with one message.
"""
import argparse
import difflib
import io
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _python  # noqa: E402

_python.require(["numpy", "pandas", "scipy"], __file__, __name__ == "__main__")
import pandas as pd  # noqa: E402

import stats  # noqa: E402
from stats import StatsError  # noqa: E402

GUARDED_PROVENANCE = ["build_commit", "git_commit", "git_dirty", "device", "backend", "threads", "compiler",
                      "build_type", "ablate_version"]
INFO_PROVENANCE = ["hostname"]  # listed when they differ, never refused
ALIASES = {"git_commit": "build_commit", "build_commit": "git_commit", "threads": "config.threads",
           "config.threads": "threads", "backend": "config.backend", "config.backend": "backend"}
DEFAULT_METRICS = "output_throughput,ttft_median_ms,tpot_median_ms"


def guarded_config(col):
    return col in ("config.backend", "config.threads", "backend", "threads", "dtype") or col.startswith("model.")


class Run:
    def __init__(self, arg):
        self.arg = arg
        if os.path.isdir(arg):
            self.dir, self.summary = arg, os.path.join(arg, "summary.csv")
            if not os.path.exists(self.summary):
                raise StatsError(f"{arg}: no summary.csv in this folder")
            self.label = os.path.basename(os.path.normpath(os.path.abspath(arg)))
        elif os.path.isfile(arg):
            self.dir, self.summary = os.path.dirname(os.path.abspath(arg)), arg
            name = os.path.basename(arg)
            sibling = name == "summary.csv"  # a renamed copy (summary_run1.csv) has no folder of its own
            self.label = os.path.basename(self.dir) if sibling else os.path.splitext(name)[0]
            if not sibling:
                self.dir = None
        else:
            raise StatsError(f"{arg}: no such run folder or file")
        try:
            self.df = pd.read_csv(self.summary)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise StatsError(f"cannot read {self.summary}: {e}")
        if self.df.empty:
            raise StatsError(f"{self.summary} has no rows")
        self.provenance = read_flat_yaml(self._path("provenance.yaml")) or {}
        self.config_keys = stats.read_config_keys(self._path("config.yaml") or "")
        self.status = str(self.provenance.get("status", "complete")).strip() or "complete"
        self._requests = None

    def _path(self, name):
        return os.path.join(self.dir, name) if self.dir else None

    def requests(self):
        if self._requests is None:
            path = self._path("requests.csv")
            self._requests = pd.read_csv(path) if path and os.path.exists(path) else pd.DataFrame()
        return self._requests


def read_flat_yaml(path):
    """provenance.yaml: `key: "value"` lines."""
    if not path or not os.path.exists(path):
        return None
    out = {}
    with open(path) as f:
        for line in f:
            if line.startswith(("#", " ", "-")) or ":" not in line:
                continue
            k, _, v = line.partition(":")
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
                v = v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            out[k.strip()] = v
    return out


def load(args):
    runs = [Run(a) for a in args.runs]
    labels = {}
    for r in runs:  # distinct labels: basename, else the path as given, else numbered
        if r.label in labels.values():
            r.label = os.path.normpath(r.arg)
        base, k = r.label, 2
        while r.label in labels.values():
            r.label, k = f"{base}#{k}", k + 1
        labels[id(r)] = r.label
    bad = [r for r in runs if r.status == "interrupted"]
    if bad and not args.include_interrupted:
        raise StatsError("interrupted run(s): " + ", ".join(r.arg for r in bad) +
                         " (provenance.yaml says status: interrupted; its points may be incomplete); "
                         "pass --include-interrupted to use them anyway")
    frames = []
    for r in runs:
        d = r.df.copy()
        for k in stats.PROVENANCE_COLUMNS:  # a column the summary lacks but provenance.yaml has
            if k not in d.columns and k in r.provenance and k != "status":
                d[k] = r.provenance[k]
        d["run"] = r.label
        d["_run"] = len(frames)
        frames.append(d)
    df = pd.concat(frames, ignore_index=True, sort=False)
    keys = []
    for r in runs:
        for k in r.config_keys or []:
            if k not in keys:
                keys.append(k)
    config_cols = stats.config_columns(df, keys if all(r.config_keys for r in runs) else None)
    return runs, df, config_cols


def short(col, value):
    return value[:12] if col in stats.COMMIT_COLUMNS and len(value) > 12 else value


def describe(df, col, runs):
    """'v1 (run a, run b); v2 (run c)'."""
    parts = []
    for v in stats.distinct(df[col]):
        where = sorted({runs[i].label for i in df.loc[df[col].map(lambda x: stats.distinct([x])[0] == v),
                                                      "_run"]})
        parts.append(f"{short(col, v)} ({', '.join(where)})")
    return "; ".join(parts)


def check_provenance(df, runs, config_cols, vary):
    """Difference lines (every difference seen); raises StatsError when a guarded difference was
    not named with --vary."""
    for col in vary:
        if col not in df.columns and not (ALIASES.get(col) in df.columns):
            stats.check_column(df, col, "the runs (--vary)")
    allowed = set(vary) | {ALIASES[c] for c in vary if c in ALIASES}
    lines, refused = [], []
    for col in GUARDED_PROVENANCE + INFO_PROVENANCE:
        if col in df.columns and len(stats.distinct(df[col])) > 1:
            ok = col in allowed or col in INFO_PROVENANCE
            tag = "accepted, --vary" if col in allowed else ("informational" if ok else "NOT accepted")
            lines.append(f"{col} [{tag}]: {describe(df, col, runs)}")
            if not ok:
                refused.append(col)
    for col in config_cols:
        if col not in df.columns or col in stats.NOT_A_TREATMENT or len(stats.distinct(df[col])) < 2:
            continue
        if any(len(stats.distinct(part[col])) > 1 for _, part in df.groupby("_run")):
            continue  # swept inside a run: the config asked for it
        if guarded_config(col) and col not in allowed:
            lines.append(f"{col} [NOT accepted]: {describe(df, col, runs)}")
            refused.append(col)
        else:
            tag = "accepted, --vary" if col in allowed else "between runs"
            lines.append(f"{col} [{tag}; grouped by]: {describe(df, col, runs)}")
    for col in vary:
        if col in df.columns and len(stats.distinct(df[col])) < 2:
            lines.append(f"{col} [--vary]: no difference seen ({short(col, stats.distinct(df[col])[0])})")
    if refused:
        raise StatsError("the rows differ in what must match: " + ", ".join(refused) + "\n  " +
                         "\n  ".join(line for line in lines if "NOT accepted" in line) +
                         "\npass --vary COL for each intended difference (e.g. --vary git_commit for an A/B "
                         "of two commits, --vary run for an A/A of two runs)")
    return lines


def collinear(df, a, b):
    """a and b split the rows the same way."""
    pairs = len(df[[a, b]].astype(str).drop_duplicates())
    return pairs == len(stats.distinct(df[a])) == len(stats.distinct(df[b]))


def group_keys(df, config_cols, vary):
    """The swept config columns, then each --vary column that differs (unless it is the alias of a
    key already there that splits the rows the same way: threads beside a swept config.threads),
    then an alias of a --vary column where it splits the rows differently (or the named one is
    absent or constant: --vary git_commit over runs that differ only in build_commit)."""
    keys = stats.swept_columns(df, config_cols)

    def differs(c):
        return c in df.columns and len(stats.distinct(df[c])) > 1

    for col in vary:
        alias = ALIASES.get(col)
        if not differs(col) or col in keys or (alias in keys and collinear(df, col, alias)):
            continue
        keys.append(col)
    for col in vary:
        alias = ALIASES.get(col)
        if not alias or alias in vary or alias in keys or not differs(alias):
            continue
        if col in keys and collinear(df, col, alias):
            continue
        keys.append(alias)
    return keys


def metric_list(items):
    out = []
    for item in items or [DEFAULT_METRICS]:
        out += [m.strip() for m in item.split(",") if m.strip()]
    return list(dict.fromkeys(out))


def check_metrics(df, metrics, config_cols):
    for m in metrics:
        if m not in df.columns:
            cands = [c for c in df.columns if not c.startswith("_") and c not in config_cols
                     and c not in stats.META_COLUMNS + stats.PROVENANCE_COLUMNS]
            close = difflib.get_close_matches(m, cands, n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise StatsError(f"unknown metric '{m}'{hint}")
        if pd.to_numeric(df[m], errors="coerce").notna().sum() == 0:
            raise StatsError(f"metric '{m}' has no numeric values in these runs")


def norm(v):
    return stats.py(v)


class Group:
    def __init__(self, key, index):
        self.key, self.index = key, index
        self.cells = {}  # metric -> (Interval, source)
        self.ratios = {}  # metric -> Interval, or "baseline"


def build_groups(df, keys):
    groups = {}
    for i, row in df[keys].iterrows() if keys else ((i, None) for i in df.index):
        k = tuple(norm(v) for v in row) if keys else ()
        groups.setdefault(k, []).append(i)
    # order: each key's values in order of first appearance (the sweep's order), first key slowest
    rank = [{} for _ in keys]
    for k in groups:
        for j, v in enumerate(k):
            rank[j].setdefault(v, len(rank[j]))
    order = sorted(groups, key=lambda k: tuple(rank[j][v] for j, v in enumerate(k)))
    return [Group(k, groups[k]) for k in order]


def samples(df, runs, g, metric, within):
    """(values, centre kind, source, extra) of a group's metric: its repeats; with --within-run and
    n < 3 for a median/mean-over-requests metric, its requests."""
    vals = pd.to_numeric(df.loc[g.index, metric], errors="coerce").dropna()
    kind = stats.centre_kind(metric)
    src = stats.request_source(metric)
    if within and src and len(vals) < stats.MIN_N:
        col, kind_r = src
        reqs = []
        for i in g.index:
            r = runs[df.at[i, "_run"]].requests()
            if r.empty or col not in r.columns or "point" not in r.columns:
                return vals, kind, "repeats"
            sel = r["point"] == df.at[i, "point"]
            if "repeat" in r.columns and "repeat" in df.columns:
                sel &= r["repeat"] == df.at[i, "repeat"]
            reqs.append(pd.to_numeric(r.loc[sel, col], errors="coerce").dropna())
        req = pd.concat(reqs) if reqs else pd.Series(dtype=float)
        if len(req) >= stats.MIN_N:
            return req, kind_r, "requests"
    return vals, kind, "repeats"


def compute(df, runs, groups, keys, metrics, baseline, within):
    for g in groups:
        for m in metrics:
            v, kind, src = samples(df, runs, g, m, within)
            g.cells[m] = (stats.ci(v, kind), src)
    if not baseline:
        return None
    key_frame = pd.DataFrame([g.key for g in groups], columns=keys)
    for col, _ in baseline:
        if col not in keys:
            if col not in df.columns:
                stats.check_column(df, col, "the runs (--baseline)")
            raise StatsError(f"--baseline {col}: this column does not differ between the groups compared, so it "
                             f"cannot pick a baseline; the groups differ in: {', '.join(keys) or 'nothing'}")
    refs, is_base = stats.reference_groups(key_frame, baseline)
    if not is_base.any():
        col, val = baseline[0]
        avail = "; ".join(f"{c} has {', '.join(stats.distinct(key_frame[c]))}" for c, _ in baseline)
        raise StatsError(f"--baseline {', '.join(f'{c}={v}' for c, v in baseline)} matches no rows ({avail})")
    for g, ref, base in zip(groups, refs, is_base):
        for m in metrics:
            if base:
                g.ratios[m] = "baseline"
            elif ref is None:
                g.ratios[m] = None
            else:
                v, kind, src = samples(df, runs, g, m, within)
                w, _, src_b = samples(df, runs, groups[ref], m, within)
                g.ratios[m] = (stats.ratio_ci(v, w, kind), src) if src == src_b else None
    return refs


# --------------------------------------------------------------------------------------------
# Output

LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "<": r"\textless{}", ">": r"\textgreater{}"}


def tex(s):
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(s))


def key_text(col, v):
    return "(missing)" if v is None else short(col, str(v))


def cell(iv, src, fmt, latex):
    if iv.centre is None:
        return "--" if latex else "n/a"
    dagger = (r"$^{\dagger}$" if latex else "†") if src == "requests" else ""
    if iv.has_interval:
        return f"{fmt(iv.centre)} [{fmt(iv.lo)}, {fmt(iv.hi)}]{dagger}"
    note = r"($n<3$: no interval)" if latex else f"({iv.note})"
    if iv.note and iv.note != stats.NO_INTERVAL:
        note = f"({tex(iv.note)})" if latex else f"({iv.note})"
    return f"{fmt(iv.centre)} {note}"


def ratio_cell(r, latex):
    if r == "baseline":
        return "baseline"
    dash = "--" if latex else "—"
    if r is None:
        return dash
    r, src = r
    if r.centre is None:
        return f"{dash} ({tex(r.note) if latex else r.note})" if r.note else dash
    f = lambda x: f"{x:.3f}"  # noqa: E731
    dagger = (r"$^{\dagger}$" if latex else "†") if src == "requests" else ""
    if not r.has_interval:
        return f"{f(r.centre)}{dagger} " + (r"($n<3$: no interval)" if latex else f"({r.note})")
    mark = (r"$^{*}$" if latex else " *") if r.excludes_one else ""
    return f"{f(r.centre)} [{f(r.lo)}, {f(r.hi)}]{dagger}{mark}"


def notes(metrics, baseline, diffs, groups, latex=False):
    kinds = {}
    for m in metrics:
        kinds.setdefault(stats.centre_kind(m), []).append(m)
    centre = "; ".join(f"{k} over repeats ({', '.join(ms)})" for k, ms in kinds.items())
    out = [f"Centre: {centre}. [lo, hi]: {stats.CONFIDENCE:.0%} bootstrap CI (BCa; percentile where BCa is "
           f"undefined; {stats.N_RESAMPLES} resamples, seed {stats.SEED}); {stats.NO_INTERVAL}; n: rows (repeats) "
           f"per group."]
    if baseline:
        out.append("ratio: the group's centre / its baseline group's (" + ", ".join(f"{c}={v}" for c, v in baseline) +
                   "; where several groups match, the one equal on the other keys), both arms resampled "
                   "independently; * : the ratio's CI excludes 1; — : no such baseline group.")
    if any(src == "requests" for g in groups for _, src in g.cells.values()):
        out.append("†: interval bootstrapped over the requests of the run(s) (--within-run, n < 3 repeats): "
                   "how well the run pins its own median, not run-to-run noise.")
    out += [f"Difference: {d}" for d in diffs]
    return out


def header(keys, metrics, baseline, latex):
    cols = [tex(k) if latex else k for k in keys] + (["$n$"] if latex else ["n"])
    for m in metrics:
        name = f"{m} ({stats.centre_kind(m)})"
        cols.append(tex(name) if latex else name)
        if baseline:
            cols.append("ratio")
    return cols


def rows(groups, keys, metrics, baseline, latex):
    fmt = stats.fmt_num
    out = []
    for g in groups:
        n = len(g.index)
        row = [tex(key_text(k, v)) if latex else key_text(k, v) for k, v in zip(keys, g.key)]
        row.append(str(len(g.index)))
        for m in metrics:
            iv, src = g.cells[m]
            c = cell(iv, src, fmt, latex)
            if src == "repeats" and iv.n != n:
                c += f" (n={iv.n})"
            row.append(c)
            if baseline:
                row.append(ratio_cell(g.ratios.get(m), latex))
        out.append(row)
    return out


def markdown(groups, keys, metrics, baseline, diffs):
    head = header(keys, metrics, baseline, False)
    body = rows(groups, keys, metrics, baseline, False)
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in head) + " |",
             "|" + "|".join(":--" if i < len(keys) else "--:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in body]
    return "\n".join(lines) + "\n\n" + "\n".join(notes(metrics, baseline, diffs, groups)) + "\n"


def latex(groups, keys, metrics, baseline, diffs, argv):
    head = header(keys, metrics, baseline, True)
    body = rows(groups, keys, metrics, baseline, True)
    spec = "l" * len(keys) + "r" + "l" * (len(head) - len(keys) - 1)
    out = ["% generated by plots/compare.py " + " ".join(argv).replace("\n", " "),
           "% needs \\usepackage{booktabs}"]
    out += ["% " + n.replace("\n", " ") for n in notes(metrics, baseline, diffs, groups)]
    out += [f"\\begin{{tabular}}{{{spec}}}", "\\toprule", " & ".join(head) + " \\\\", "\\midrule"]
    out += [" & ".join(r) + " \\\\" for r in body]
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


def csv_text(groups, keys, metrics, baseline):
    recs = []
    for g in groups:
        for m in metrics:
            iv, src = g.cells[m]
            r = g.ratios.get(m) if baseline else None
            r = r[0] if isinstance(r, tuple) else r
            rec = dict(zip(keys, g.key))
            rec.update({"n": len(g.index), "metric": m, "centre_kind": iv.kind, "centre": iv.centre, "lo": iv.lo,
                        "hi": iv.hi, "half_width": iv.half_width, "n_values": iv.n, "method": iv.method,
                        "source": src, "note": iv.note})
            if baseline:
                ratio = r if isinstance(r, stats.Interval) else None
                rec.update({"baseline": r == "baseline",
                            "ratio": 1.0 if r == "baseline" else (ratio.centre if ratio else None),
                            "ratio_lo": ratio.lo if ratio else None, "ratio_hi": ratio.hi if ratio else None,
                            "ratio_method": ratio.method if ratio else None,
                            "ratio_excludes_1": ratio.excludes_one if ratio else None})
            recs.append(rec)
    buf = io.StringIO()
    pd.DataFrame(recs).to_csv(buf, index=False)
    return buf.getvalue()


def write_out(text, path, force):
    if path is None:
        sys.stdout.write(text)
        return
    if os.path.exists(path) and not force:
        raise StatsError(f"{path} already exists; pass --force to overwrite")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"compare.py: wrote {path}", file=sys.stderr)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="compare.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Statistics: plots/stats.py. Examples: plots/README.md.")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="results folder(s) or summary CSV file(s)")
    p.add_argument("--baseline", action="append", default=[], metavar="KEY=VALUE",
                   help="the baseline group (repeatable; a commit matches by prefix)")
    p.add_argument("--metrics", action="append", metavar="M1,M2", help=f"default {DEFAULT_METRICS}")
    p.add_argument("--format", choices=["markdown", "csv", "latex"], default="markdown")
    p.add_argument("--out", help="write here (atomically) instead of stdout")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("--vary", nargs="+", action="extend", default=[], metavar="COL",
                   help="intended differences (git_commit, device, ..., or run: one group per folder)")
    p.add_argument("--include-interrupted", action="store_true")
    p.add_argument("--within-run", action="store_true",
                   help="for *_median_ms/*_mean_ms latency metrics of groups with n < 3 repeats: CI over requests")
    a = p.parse_args(argv)
    # `--vary git_commit runA runB` swallows the folders: give back what is a path and no column name
    moved = [v for v in a.vary if v != "run" and (os.path.isdir(v) or (os.path.isfile(v) and v.endswith(".csv")))]
    a.vary = [v for v in a.vary if v not in moved]
    a.runs += moved
    if not a.runs:
        p.error("give at least one RUN_DIR")
    return a


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        a = parse_args(argv)
        runs, df, config_cols = load(a)
        for r in runs:
            if r.status not in ("complete", "completed", ""):
                print(f"compare.py: note: {r.arg}: status {r.status}", file=sys.stderr)
        metrics = metric_list(a.metrics)
        check_metrics(df, metrics, config_cols)
        diffs = check_provenance(df, runs, config_cols, a.vary)
        keys = group_keys(df, config_cols, a.vary)
        baseline = stats.parse_key_values(a.baseline)
        groups = build_groups(df, keys)
        compute(df, runs, groups, keys, metrics, baseline, a.within_run)
        for d in diffs:
            print(f"compare.py: difference: {d}", file=sys.stderr)
        if a.format == "markdown":
            text = markdown(groups, keys, metrics, baseline, diffs)
        elif a.format == "latex":
            text = latex(groups, keys, metrics, baseline, diffs, ["compare.py", *argv])
        else:
            text = csv_text(groups, keys, metrics, baseline)
        write_out(text, a.out, a.force)
    except StatsError as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
