#!/usr/bin/env python3
"""The one place ablate's statistics are computed: centres, bootstrap confidence intervals, ratios
of two arms, within-run (per-request) intervals, and the column bookkeeping that decides what a
"sweep point" is. plots/compare.py and plots/plot.py import it; it is also a small CLI.

Centre per metric (`centre_kind`)
    The median across repeats, for every metric except the count-like ones in MEAN_METRICS
    (acceptance_rate, acceptance_length, acceptance_rate_pos_*, preemptions, mean_batch_size,
    steps, completed, num_drafts, draft_tokens, accepted_tokens, padding_rows), which use the mean.
    Timings (throughputs, TTFT/TPOT/E2EL medians and percentiles, durations) are right-skewed by
    noisy neighbours, so the median is the robust summary; counts of discrete events are summed
    over a run and their expected value is what is reported (the median of a few small integers
    would jump between observed values).

Interval (`ci`, `ci_batch`)
    95 % two-sided bootstrap confidence interval of the centre over the repeats, with
    scipy.stats.bootstrap: method BCa; percentile where BCa is undefined (it returns nan, e.g. when
    the jackknife is degenerate). All-equal samples give the zero-width interval [x, x] (method
    "degenerate"). n_resamples 9999, seed SEED (a fresh numpy Generator per call, so a number never
    depends on what was computed before it). Fewer than 3 values: no interval ("n < 3: no
    interval"; lo, hi and half_width are None).
    Measured coverage of the median's interval (how often it contains the true median; 10000
    seeded trials of normal samples, the same for any monotone transform such as log-normal; the
    median's bootstrap distribution is discrete, so coverage moves with n): n=3 75 % (the
    interval is the sample's range), n=4 87 %, n=5 94 %, n=6 93 %, n=7 87 %, n=8 92 %,
    n=10 94 %, n=15 92 %, n=20 94 %, n=21 93 %, n=25 94 %, n=28 95 %. So: prefer repeat >= 5
    (5, 6 or 10), and do not read an n = 3 or n = 7 interval as a 95 % claim.
    tests/python/test_stats.py checks 93-97 % at n = 28 (median of normal and log-normal
    samples, mean of normal samples; 1000 trials each).

Ratio (`ratio_ci`)
    centre(a) / centre(b) with a two-sample bootstrap (both arms resampled independently,
    paired=False), the same method rule, seed and n < 3 rule (for either arm). `excludes_one`: the
    interval lies wholly above or below 1.

Within-run (`within_run`)
    From requests.csv: the interval of a point's median (or mean) TTFT/TPOT/E2EL/queue time,
    bootstrapped over its requests (all repeats of the point pooled), so a single long run gets an
    interval. Requests of one run share the machine and the batch, so this interval is narrower
    than the repeat-to-repeat one: it says how well the run pins its own median, not how well
    another run would reproduce it.

CLI
    stats.py ci SUMMARY.csv [...] --metric M [--group-by auto|point|swept|COL,COL]
                [--centre median|mean] [--target H] [--seed S] [--n-resamples R]
    stats.py within RUN_DIR|requests.csv [--metric ttft_ms] [--by point|point,repeat] [...]

    Both print one JSON object on stdout (exit 0; errors: one line on stderr, exit 2):
    {
      "metric": "output_throughput", "centre": "median", "confidence": 0.95,
      "n_resamples": 9999, "seed": 20240611, "group_by": ["point"],
      "groups": [
        {"key": {"point": 0}, "point": 0, "centre": 51.83, "lo": 50.85, "hi": 52.09, "n": 3,
         "half_width": 0.0120, "method": "BCa", "note": null},
        {"key": {"point": 1}, "point": 1, "centre": 107.5, "lo": null, "hi": null, "n": 2,
         "half_width": null, "method": "none", "note": "n < 3: no interval"}],
      "max_half_width": null
    }
    half_width is the relative half-width (hi - lo) / 2 / |centre|; "point" is repeated at the top
    of a group only when grouping by point. max_half_width is the largest half_width, null when
    any group has none (n < 3) or a zero centre. With --target H the object also has "target": H
    and "converged": max_half_width <= H (false while it is null): `repeat: auto` keeps adding
    rounds until it is true. Groups: auto = by `point` when one file with a `point` column is
    given, else by the swept config columns (config columns whose values differ between rows);
    `run_index` and `round` are never grouping columns.
"""
import argparse
import difflib
import inspect
import json
import math
import os
import re
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _python  # noqa: E402

_python.require(["numpy", "pandas", "scipy"], __file__, __name__ == "__main__")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.stats  # noqa: E402

CONFIDENCE = 0.95
N_RESAMPLES = 9999
SEED = 20240611
MIN_N = 3
NO_INTERVAL = "n < 3: no interval"

MEAN_METRICS = {"acceptance_rate", "acceptance_length", "preemptions", "mean_batch_size", "steps", "completed",
                "num_drafts", "draft_tokens", "accepted_tokens", "padding_rows"}
MEAN_PREFIXES = ("acceptance_rate_pos_",)

# Column bookkeeping of summary.csv: point, repeat, provenance, config keys (dotted; a key that
# repeats a provenance column's name gets "config."), metrics ("metric." on a clash).
META_COLUMNS = ["point", "repeat", "run_index", "round", "run"]  # "run": compare.py's folder label
PROVENANCE_COLUMNS = ["git_commit", "git_dirty", "build_commit", "ablate_version", "compiler", "build_type",
                      "backend", "device", "threads", "hostname", "start_time", "status"]
KNOWN_TOP_CONFIG = {"experiment", "seed", "threads", "backend", "batching", "attention", "dtype", "cuda_graphs",
                    "max_seq_len", "repeat", "warmup", "order"}
NOT_A_TREATMENT = {"config.repeat"}  # how many repeats is not what a point is; nor are `order`'s rounds
FIRST_METRIC = "completed"

_RNG_ARG = "rng" if "rng" in inspect.signature(scipy.stats.bootstrap).parameters else "random_state"


class StatsError(ValueError):
    """A user-facing error (bad column, no rows): the CLIs print it and exit 2."""


# --------------------------------------------------------------------------------------------
# Centres and intervals


def centre_kind(metric):
    """'median' or 'mean': the centre used for `metric` across repeats (see the module docstring)."""
    name = metric[len("metric."):] if metric.startswith("metric.") else metric
    return "mean" if name in MEAN_METRICS or name.startswith(MEAN_PREFIXES) else "median"


def centre_fn(kind):
    if kind not in ("median", "mean"):
        raise StatsError(f"centre must be median or mean, not '{kind}'")
    return np.median if kind == "median" else np.mean


class Interval:
    """A centre with its bootstrap interval; lo/hi are None when there is no interval."""

    def __init__(self, centre, lo, hi, n, method, kind, note=None):
        self.centre, self.n, self.method, self.kind = _num(centre), int(n), method, kind
        self.lo, self.hi = _num(lo), _num(hi)
        self.note = note if note else (NO_INTERVAL if n < MIN_N else None)

    @property
    def has_interval(self):
        return self.lo is not None and self.hi is not None

    @property
    def half_width(self):
        """Relative half-width (hi - lo) / 2 / |centre|; None without an interval or with centre 0."""
        if not self.has_interval or self.centre is None or self.centre == 0:
            return None
        return (self.hi - self.lo) / 2 / abs(self.centre)

    @property
    def excludes_one(self):
        """For ratios: the interval lies wholly above or below 1."""
        return self.has_interval and (self.lo > 1 or self.hi < 1)

    def as_dict(self):
        return {"centre": self.centre, "lo": self.lo, "hi": self.hi, "n": self.n,
                "half_width": self.half_width, "method": self.method, "note": self.note}

    def text(self, fmt=None):
        fmt = fmt or fmt_num
        if self.centre is None:
            return "n/a"
        if not self.has_interval:
            return f"{fmt(self.centre)} ({self.note or 'no interval'})"
        return f"{fmt(self.centre)} [{fmt(self.lo)}, {fmt(self.hi)}]"

    def __repr__(self):
        return f"Interval({self.text()}, n={self.n}, {self.method})"


def _num(x):
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def fmt_num(x):
    """4 significant digits; integers from 10000 up without exponent."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if abs(x) >= 1e4:
        return f"{x:.0f}"
    return f"{x:.4g}"


def _bootstrap(data, statistic, method, confidence, n_resamples, seed, paired=False):
    """scipy.stats.bootstrap along the last axis, vectorised; returns (low, high) arrays."""
    elements = max(1, int(np.prod(np.shape(data[0])[:-1]) * max(np.shape(d)[-1] for d in data)))
    batch = int(max(1, min(n_resamples, 4_000_000 // elements)))  # bound the resample array's memory
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DegenerateDataWarning / RuntimeWarning: handled by the nan fallback
        res = scipy.stats.bootstrap(data, statistic, n_resamples=n_resamples, batch=batch, vectorized=True,
                                    paired=paired, axis=-1, confidence_level=confidence, method=method,
                                    **{_RNG_ARG: np.random.default_rng(seed)})
    return np.asarray(res.confidence_interval.low, float), np.asarray(res.confidence_interval.high, float)


def ci_batch(samples, kind="median", confidence=CONFIDENCE, n_resamples=N_RESAMPLES, seed=SEED):
    """Intervals for many samples of one size at once: `samples` is (m, n), one sample per row, no
    NaN. Returns a dict of arrays centre, lo, hi (nan without an interval) and method (object).
    `ci` is this with m = 1, so the coverage test exercises exactly the production path."""
    x = np.asarray(samples, dtype=float)
    if x.ndim != 2:
        raise ValueError("ci_batch expects a 2-D array (samples x values)")
    if np.isnan(x).any():
        raise ValueError("ci_batch: samples contain NaN")
    fn = centre_fn(kind)
    m, n = x.shape
    centre = fn(x, axis=-1) if n else np.full(m, np.nan)
    lo, hi = np.full(m, np.nan), np.full(m, np.nan)
    method = np.full(m, "none", dtype=object)
    if n < MIN_N:
        return {"centre": centre, "lo": lo, "hi": hi, "method": method}
    degenerate = np.all(x == x[:, :1], axis=1)
    lo[degenerate], hi[degenerate], method[degenerate] = centre[degenerate], centre[degenerate], "degenerate"
    todo = np.flatnonzero(~degenerate)
    if todo.size:
        stat = lambda s, axis: fn(s, axis=axis)  # noqa: E731
        bl, bh = _bootstrap((x[todo],), stat, "BCa", confidence, n_resamples, seed)
        lo[todo], hi[todo], method[todo] = bl, bh, "BCa"
        bad = todo[np.isnan(bl) | np.isnan(bh)]
        if bad.size:
            pl, ph = _bootstrap((x[bad],), stat, "percentile", confidence, n_resamples, seed)
            lo[bad], hi[bad], method[bad] = pl, ph, "percentile"
    return {"centre": centre, "lo": lo, "hi": hi, "method": method}


def _clean(values):
    v = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=float)
    return v[~np.isnan(v)]


def ci(values, kind="median", confidence=CONFIDENCE, n_resamples=N_RESAMPLES, seed=SEED):
    """Interval of the centre (`kind`) of `values` (NaN and empty cells dropped)."""
    v = _clean(values)
    if v.size == 0:
        return Interval(None, None, None, 0, "none", kind, note="no values")
    r = ci_batch(v[None, :], kind, confidence, n_resamples, seed)
    return Interval(r["centre"][0], r["lo"][0], r["hi"][0], v.size, r["method"][0], kind)


def ratio_ci(a, b, kind="median", confidence=CONFIDENCE, n_resamples=N_RESAMPLES, seed=SEED):
    """centre(a) / centre(b) with a two-sample bootstrap interval (arms resampled independently).
    Interval.n is min(len(a), len(b)); the interval needs both arms to have >= 3 values."""
    a, b = _clean(a), _clean(b)
    if a.size == 0 or b.size == 0:
        return Interval(None, None, None, min(a.size, b.size), "none", kind, note="no values")
    fn = centre_fn(kind)
    ca, cb = fn(a), fn(b)
    n = min(a.size, b.size)
    if cb == 0:
        return Interval(None, None, None, n, "none", kind, note="baseline centre is 0")
    r = ca / cb
    if n < MIN_N:
        return Interval(r, None, None, n, "none", kind)
    if np.all(a == a[0]) and np.all(b == b[0]):
        return Interval(r, r, r, n, "degenerate", kind)

    def stat(s1, s2, axis):
        with np.errstate(divide="ignore", invalid="ignore"):
            return fn(s1, axis=axis) / fn(s2, axis=axis)

    lo, hi = _bootstrap((a[None, :], b[None, :]), stat, "BCa", confidence, n_resamples, seed)
    method = "BCa"
    if not (np.isfinite(lo[0]) and np.isfinite(hi[0])):
        lo, hi = _bootstrap((a[None, :], b[None, :]), stat, "percentile", confidence, n_resamples, seed)
        method = "percentile"
    return Interval(r, lo[0], hi[0], n, method, kind)


# --------------------------------------------------------------------------------------------
# Within-run intervals from requests.csv

REQUEST_METRIC = re.compile(r"^(ttft|tpot|e2el|queue_time)_(median|mean)_ms$")


def request_source(metric):
    """(requests.csv column, centre kind) for a summary metric that is a median or mean over
    requests (ttft_median_ms -> ('ttft_ms', 'median')), else None (percentiles, throughputs)."""
    m = REQUEST_METRIC.match(metric[len("metric."):] if metric.startswith("metric.") else metric)
    return (f"{m.group(1)}_ms", m.group(2)) if m else None


def within_run(requests, column="ttft_ms", kind="median", by=("point",), **kw):
    """[(key dict, Interval)] per group of `by` in a requests.csv frame, bootstrapped over requests."""
    for c in [column, *by]:
        check_column(requests, c, "requests.csv")
    out = []
    for key, part in requests.groupby(list(by) if len(by) > 1 else by[0], sort=True):
        key = key if isinstance(key, tuple) else (key,)
        out.append(({c: py(v) for c, v in zip(by, key)}, ci(part[column], kind, **kw)))
    return out


# --------------------------------------------------------------------------------------------
# Columns, sweep points, baselines


def py(v):
    """A pandas/numpy scalar as a plain JSON-able Python value (NaN -> None, 16.0 -> 16)."""
    if v is None:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return None
        return int(v) if float(v).is_integer() and abs(v) < 2**53 else float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def check_column(df, col, what="the data"):
    if col in df.columns:
        return
    cols = [c for c in df.columns if not c.startswith("_")]
    close = difflib.get_close_matches(col, cols, n=3)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise StatsError(f"unknown column '{col}' in {what}{hint}")


def read_config_keys(path):
    """Dotted leaf keys of a run's config.yaml (ablate writes block maps, two-space indent, one
    document per point), without a YAML library. Missing file: None."""
    if not os.path.exists(path):
        return None
    keys, stack = [], []
    with open(path) as f:
        for line in f:
            if not line.strip() or line.lstrip().startswith(("#", "---", "- ")):
                continue
            m = re.match(r"^( *)([A-Za-z0-9_.\-]+):(?:\s+(.*))?$", line.rstrip("\n"))
            if not m:
                continue
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path_ = ".".join([s[1] for s in stack] + [m.group(2)])
            if m.group(3) is None or m.group(3).strip() == "":
                stack.append((indent, m.group(2)))
            elif path_ not in keys:
                keys.append(path_)
    return keys


def config_columns(df, config_keys=None):
    """The config-key columns of a summary frame. With `config_keys` (from config.yaml) exact:
    each key is its column, or "config."+key where it clashed. Without: the columns from
    `experiment` up to the first metric (`completed`), else dotted columns and known top-level keys."""
    cols = list(df.columns)
    skip = set(META_COLUMNS) | set(PROVENANCE_COLUMNS)
    if config_keys:
        out = []
        for k in config_keys:
            if "config." + k in df.columns:
                out.append("config." + k)
            elif k in df.columns and k not in skip:
                out.append(k)
        return out
    if "experiment" in cols and FIRST_METRIC in cols and cols.index("experiment") < cols.index(FIRST_METRIC):
        block = cols[cols.index("experiment"):cols.index(FIRST_METRIC)]
        return [c for c in block if c not in skip and not c.startswith("_")]
    return [c for c in cols if not c.startswith(("_", "metric.")) and c not in skip
            and ("." in c or c in KNOWN_TOP_CONFIG)]


def distinct(series):
    """Distinct values of a column as display strings, NaN as '(missing)', in first-seen order."""
    seen = []
    for v in series:
        s = "(missing)" if v is None or (isinstance(v, float) and math.isnan(v)) else str(py(v))
        if s not in seen:
            seen.append(s)
    return seen


def swept_columns(df, config_cols):
    """Config columns whose values differ between rows (config.repeat excluded)."""
    return [c for c in config_cols if c in df.columns and c not in NOT_A_TREATMENT and len(distinct(df[c])) > 1]


def parse_key_values(items, what="--baseline"):
    out = []
    for item in items or []:
        parts = item.split(",")
        for part in parts if all("=" in q for q in parts) else [item]:
            col, sep, val = part.partition("=")
            if not sep or not col:
                raise StatsError(f"{what} expects KEY=VALUE, got '{part}'")
            out.append((col.strip(), val.strip()))
    return out


COMMIT_COLUMNS = ("git_commit", "build_commit")


def value_matches(series, col, value):
    """Boolean mask: rows whose `col` equals `value` (numerically when both are numbers; a commit
    matches by prefix of at least 4 characters; '(missing)' matches empty cells)."""
    if value == "(missing)":
        return series.isna()
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        num = pd.to_numeric(value, errors="coerce")
        if pd.notna(num):
            return np.isclose(series.astype(float), float(num), rtol=1e-12, atol=0) & series.notna()
    text = series.map(lambda v: None if (isinstance(v, float) and math.isnan(v)) else str(py(v)))
    if col in COMMIT_COLUMNS and len(value) >= 4:
        return text.map(lambda s: s is not None and (s == value or s.startswith(value.removesuffix("-dirty"))))
    if value.lower() in ("true", "false"):  # pandas reads true/false cells as booleans
        return text.map(lambda s: s is not None and s.lower() == value.lower())
    return text == value


def reference_groups(keys, baseline):
    """For a frame of group keys (one row per group), the index of each group's baseline group.
    `baseline` is [(col, value)]. When exactly one group matches it, that group is every group's
    baseline; when several do (a baseline policy across a rate sweep), a group's baseline is the
    matching group equal to it on every key not named in `baseline` (None where there is none).
    Also returns the boolean array "this group matches the baseline"."""
    named = [c for c, _ in baseline]
    others = [c for c in keys.columns if c not in named]
    is_base = np.ones(len(keys), dtype=bool)
    for col, val in baseline:
        is_base &= np.asarray(value_matches(keys[col], col, val), dtype=bool)
    base_rows = keys[is_base]
    if len(base_rows) == 1:  # one baseline group: everyone's
        return [base_rows.index[0]] * len(keys), is_base
    refs = []
    for _, row in keys.iterrows():
        cand = base_rows
        for c in others:
            cand = cand[cand[c].map(lambda v, r=row[c]: _same(v, r))]
        refs.append(cand.index[0] if len(cand) == 1 else None)
    return refs, is_base


def _same(a, b):
    na = a is None or (isinstance(a, float) and math.isnan(a))
    nb = b is None or (isinstance(b, float) and math.isnan(b))
    return na and nb or (not na and not nb and a == b)


# --------------------------------------------------------------------------------------------
# CLI


def _read_csv(path):
    if os.path.isdir(path):
        path = os.path.join(path, "summary.csv")
    if not os.path.exists(path):
        raise StatsError(f"{path}: no such file")
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise StatsError(f"cannot read {path}: {e}")


def group_columns(df, spec, n_files, config_cols):
    if spec in ("auto", None):
        spec = "point" if n_files == 1 and "point" in df.columns else "swept"
    if spec == "swept":
        return swept_columns(df, config_cols)
    cols = [c.strip() for c in spec.split(",") if c.strip()]
    for c in cols:
        check_column(df, c)
    return cols


def summarise(df, metric, by, kind=None, **kw):
    """[{key, centre, lo, hi, n, half_width, method, note}] per group of `by` (all rows when empty)."""
    check_column(df, metric)
    kind = kind or centre_kind(metric)
    groups = df.groupby(by if len(by) > 1 else by[0], sort=True, dropna=False) if by else [((), df)]
    out = []
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        iv = ci(part[metric], kind, **kw)
        out.append({"key": {c: py(v) for c, v in zip(by, key)}, **iv.as_dict()})
    return out


def report(metric, kind, by, groups, args):
    for g in groups:
        if by == ["point"]:
            g["point"] = g["key"]["point"]
    hw = [g["half_width"] for g in groups]
    obj = {"metric": metric, "centre": kind, "confidence": args.confidence, "n_resamples": args.n_resamples,
           "seed": args.seed, "group_by": by,
           "groups": [{k: g[k] for k in ["key", *(["point"] if "point" in g else []), "centre", "lo", "hi", "n",
                                             "half_width", "method", "note"]} for g in groups],
           "max_half_width": None if not hw or any(h is None for h in hw) else max(hw)}
    if getattr(args, "target", None) is not None:
        obj["target"] = args.target
        obj["converged"] = obj["max_half_width"] is not None and obj["max_half_width"] <= args.target
    return obj


def main(argv=None):
    p = argparse.ArgumentParser(prog="stats.py", description="Bootstrap confidence intervals of ablate results "
                                "(JSON on stdout; format in the module docstring).")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("ci", help="per sweep point: centre and 95%% CI of a summary.csv metric over repeats")
    c.add_argument("csv", nargs="+", help="summary.csv file(s) or run folder(s)")
    c.add_argument("--metric", required=True)
    c.add_argument("--group-by", default="auto", help="auto (default), point, swept, or COL,COL")
    c.add_argument("--target", type=float, help="relative half-width goal: adds 'converged' to the output")
    w = sub.add_parser("within", help="per point: CI of the median TTFT/TPOT bootstrapped over requests")
    w.add_argument("csv", help="requests.csv or a run folder")
    w.add_argument("--metric", default="ttft_ms", help="requests.csv column (ttft_ms, tpot_ms, e2el_ms, ...)")
    w.add_argument("--by", default="point", help="point (default) or point,repeat")
    for sp in (c, w):
        sp.add_argument("--centre", choices=["median", "mean"], help="default: per metric (see docstring); "
                        "within: median")
        sp.add_argument("--confidence", type=float, default=CONFIDENCE)
        sp.add_argument("--n-resamples", type=int, default=N_RESAMPLES)
        sp.add_argument("--seed", type=int, default=SEED)
    a = p.parse_args(argv)
    kw = {"confidence": a.confidence, "n_resamples": a.n_resamples, "seed": a.seed}
    try:
        if a.cmd == "ci":
            frames = [_read_csv(f) for f in a.csv]
            df = pd.concat(frames, ignore_index=True, sort=False)
            keys = None
            if len(a.csv) == 1:
                d = a.csv[0] if os.path.isdir(a.csv[0]) else os.path.dirname(os.path.abspath(a.csv[0]))
                keys = read_config_keys(os.path.join(d, "config.yaml"))
            by = group_columns(df, a.group_by, len(frames), config_columns(df, keys))
            kind = a.centre or centre_kind(a.metric)
            obj = report(a.metric, kind, by, summarise(df, a.metric, by, kind, **kw), a)
        else:
            path = os.path.join(a.csv, "requests.csv") if os.path.isdir(a.csv) else a.csv
            if not os.path.exists(path):
                raise StatsError(f"{path}: no such file")
            req = pd.read_csv(path)
            by = [c.strip() for c in a.by.split(",") if c.strip()]
            kind = a.centre or "median"
            groups = [{"key": k, **iv.as_dict()} for k, iv in within_run(req, a.metric, kind, by, **kw)]
            obj = report(a.metric, kind, by, groups, a)
    except StatsError as e:
        print(f"stats.py: error: {e}", file=sys.stderr)
        return 2
    json.dump(obj, sys.stdout, indent=1, allow_nan=False)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
