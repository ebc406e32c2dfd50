#!/usr/bin/env python3
"""Properties of plots/stats.py: bootstrap coverage, the n < 3 rule, the BCa -> percentile
fallback, ratios (A/A contains 1; a real difference excludes it), within-run intervals and the
CLI's JSON. Run: /usr/bin/python3 tests/python/test_stats.py  (about 15 s)."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import pandas as pd

import synth  # noqa: F401  (puts plots/ on sys.path)
import stats

TRIALS = 1000
N = 28  # the median's BCa interval covers ~94.6 % here (10000 trials); 21/23 undercover at ~92.6 %


def coverage(samples, truth, kind):
    r = stats.ci_batch(samples, kind, n_resamples=999, seed=7)
    return float(np.mean((r["lo"] <= truth) & (truth <= r["hi"]))), set(r["method"])


class Coverage(unittest.TestCase):
    """95 % intervals contain the known centre in 93-97 % of 1000 seeded trials."""

    def check(self, name, samples, truth, kind):
        cov, methods = coverage(samples, truth, kind)
        print(f"  coverage {name}: {cov:.3f} over {TRIALS} trials of n={N} (methods {sorted(methods)})")
        self.assertGreaterEqual(cov, 0.93, name)
        self.assertLessEqual(cov, 0.97, name)

    def test_median_normal(self):
        x = np.random.default_rng(101).normal(50.0, 5.0, (TRIALS, N))
        self.check("median, normal", x, 50.0, "median")

    def test_median_lognormal(self):
        x = np.random.default_rng(202).lognormal(3.0, 0.8, (TRIALS, N))
        self.check("median, log-normal", x, float(np.exp(3.0)), "median")

    def test_mean_normal(self):
        x = np.random.default_rng(303).normal(50.0, 5.0, (TRIALS, N))
        self.check("mean, normal", x, 50.0, "mean")

    def test_ci_is_ci_batch(self):
        x = np.random.default_rng(1).normal(0, 1, 12)
        a = stats.ci(x, "median", n_resamples=999, seed=3)
        b = stats.ci_batch(x[None, :], "median", n_resamples=999, seed=3)
        self.assertEqual((a.lo, a.hi), (b["lo"][0], b["hi"][0]))


class Rules(unittest.TestCase):
    def test_fewer_than_three_no_interval(self):
        for v in ([5.0], [5.0, 6.0]):
            iv = stats.ci(v)
            self.assertIsNone(iv.lo)
            self.assertIsNone(iv.half_width)
            self.assertEqual(iv.note, "n < 3: no interval")
            self.assertIn("n < 3: no interval", iv.text())
        self.assertIsNotNone(stats.ci([5.0, 6.0, 7.0]).lo)

    def test_nan_dropped_before_counting(self):
        iv = stats.ci([1.0, float("nan"), 2.0, "", 3.0])
        self.assertEqual(iv.n, 3)
        self.assertEqual(iv.centre, 2.0)

    def test_all_equal_is_zero_width(self):
        iv = stats.ci([4.0] * 5)
        self.assertEqual((iv.lo, iv.centre, iv.hi), (4.0, 4.0, 4.0))
        self.assertEqual(iv.method, "degenerate")
        self.assertEqual(iv.half_width, 0.0)

    def test_percentile_when_bca_is_undefined(self):
        # one outlier among equal values: the jackknife of the median is constant, BCa is nan
        iv = stats.ci([1.0, 1.0, 1.0, 1.0, 9.0])
        self.assertEqual(iv.method, "percentile")
        self.assertLessEqual(iv.lo, iv.centre)
        self.assertGreaterEqual(iv.hi, iv.centre)

    def test_bca_is_the_default(self):
        self.assertEqual(stats.ci(np.random.default_rng(5).normal(0, 1, 20)).method, "BCa")

    def test_seeded(self):
        x = np.random.default_rng(9).lognormal(0, 1, 15)
        self.assertEqual(stats.ci(x).as_dict(), stats.ci(x).as_dict())

    def test_centre_per_metric(self):
        self.assertEqual(stats.centre_kind("output_throughput"), "median")
        self.assertEqual(stats.centre_kind("ttft_p99_ms"), "median")
        self.assertEqual(stats.centre_kind("acceptance_rate"), "mean")
        self.assertEqual(stats.centre_kind("acceptance_rate_pos_2"), "mean")
        self.assertEqual(stats.centre_kind("preemptions"), "mean")


class Ratio(unittest.TestCase):
    def test_aa_contains_one(self):
        rng = np.random.default_rng(11)
        a = rng.lognormal(4.0, 0.1, 8)
        r = stats.ratio_ci(a, a.copy())  # two copies of one run's rows
        self.assertTrue(r.lo <= 1 <= r.hi)
        self.assertFalse(r.excludes_one)

    def test_aa_false_positive_rate(self):
        """Identical-distribution arms: the 95 % ratio CI excludes 1 rarely (about 5 %)."""
        rng = np.random.default_rng(12)
        hits = sum(stats.ratio_ci(rng.lognormal(4, 0.2, 10), rng.lognormal(4, 0.2, 10), n_resamples=999).excludes_one
                   for _ in range(200))
        print(f"  A/A: the ratio CI excluded 1 in {hits}/200 trials (n=10 per arm)")
        self.assertLessEqual(hits, 20)

    def test_real_difference_excludes_one(self):
        rng = np.random.default_rng(13)
        r = stats.ratio_ci(rng.normal(120, 3, 6), rng.normal(100, 3, 6))
        self.assertTrue(r.excludes_one, r)
        self.assertGreater(r.lo, 1)
        self.assertAlmostEqual(r.centre, 1.2, delta=0.05)

    def test_ratio_needs_three_per_arm(self):
        r = stats.ratio_ci([1.0, 2.0, 3.0], [1.0, 2.0])
        self.assertIsNone(r.lo)
        self.assertEqual(r.note, "n < 3: no interval")

    def test_zero_baseline(self):
        self.assertIsNone(stats.ratio_ci([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]).centre)


class WithinRun(unittest.TestCase):
    def test_interval_over_requests(self):
        rng = np.random.default_rng(21)
        req = pd.DataFrame({"point": [0] * 40 + [1] * 2, "repeat": 0,
                            "ttft_ms": np.r_[rng.lognormal(5, 0.3, 40), [10.0, 11.0]]})
        out = dict((k["point"], iv) for k, iv in stats.within_run(req, "ttft_ms"))
        self.assertEqual(out[0].n, 40)
        self.assertTrue(out[0].lo < out[0].centre < out[0].hi)
        self.assertIsNone(out[1].lo)  # two requests: n < 3
        self.assertEqual(stats.request_source("ttft_median_ms"), ("ttft_ms", "median"))
        self.assertEqual(stats.request_source("tpot_mean_ms"), ("tpot_ms", "mean"))
        self.assertIsNone(stats.request_source("ttft_p99_ms"))


class Cli(unittest.TestCase):
    def run_cli(self, *args):
        p = subprocess.run([sys.executable, os.path.join(synth.PLOTS, "stats.py"), *args],
                           capture_output=True, text=True)
        return p.returncode, p.stdout, p.stderr

    def test_ci_json(self):
        with tempfile.TemporaryDirectory() as tmp:
            rng = np.random.default_rng(31)
            run = synth.write_run(os.path.join(tmp, "r"), [
                ({"kv.block_size": 16}, [{"output_throughput": v} for v in rng.normal(100, 2, 5)]),
                ({"kv.block_size": 32}, [{"output_throughput": v} for v in rng.normal(90, 2, 2)])],
                extra_columns={"run_index": 0, "round": 0})
            rc, out, err = self.run_cli("ci", os.path.join(run, "summary.csv"), "--metric", "output_throughput",
                                        "--target", "0.05")
            self.assertEqual(rc, 0, err)
            obj = json.loads(out)
            self.assertEqual(obj["group_by"], ["point"])
            self.assertEqual([g["point"] for g in obj["groups"]], [0, 1])
            g0, g1 = obj["groups"]
            self.assertEqual(g0["n"], 5)
            self.assertAlmostEqual(g0["half_width"], (g0["hi"] - g0["lo"]) / 2 / g0["centre"])
            self.assertEqual((g1["n"], g1["lo"], g1["half_width"], g1["note"]), (2, None, None, "n < 3: no interval"))
            self.assertIsNone(obj["max_half_width"])
            self.assertFalse(obj["converged"])
            rc, out, _ = self.run_cli("ci", run, "--metric", "output_throughput", "--group-by", "swept")
            self.assertEqual(json.loads(out)["group_by"], ["kv.block_size"])  # run_index/round are not swept
            rc, _, err = self.run_cli("ci", run, "--metric", "output_thruput")
            self.assertEqual(rc, 2)
            self.assertIn("did you mean 'output_throughput'", err)

    def test_within_json(self):
        with tempfile.TemporaryDirectory() as tmp:
            rng = np.random.default_rng(41)
            run = synth.write_run(os.path.join(tmp, "r"), [({}, [{"output_throughput": 1}])],
                                  requests={(0, 0): list(rng.lognormal(5, 0.3, 64))})
            rc, out, err = self.run_cli("within", run, "--metric", "ttft_ms")
            self.assertEqual(rc, 0, err)
            g = json.loads(out)["groups"][0]
            self.assertEqual((g["point"], g["n"]), (0, 64))
            self.assertLess(g["lo"], g["centre"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
