#!/usr/bin/env python3
"""plots/compare.py on synthetic run folders: provenance guard (refuse, --vary), interrupted runs,
LaTeX/Markdown/CSV output, baselines and ratios (A/A contains 1, a real difference is marked),
errors with exit 2, and tolerance of run_index/round/order columns.
Run: /usr/bin/python3 tests/python/test_compare.py  (about 10 s)."""
import io
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import pandas as pd

import synth

COMPARE = os.path.join(synth.PLOTS, "compare.py")


def reps(rng, centre, n, sd=0.02):
    return [{"output_throughput": v, "ttft_median_ms": 1000 / v, "ttft_p99_ms": 2000 / v, "kv_waste": 0.1,
             "tpot_median_ms": 20.0, "completed": 8, "acceptance_rate": 0.5, "duration_s": 1.0}
            for v in centre * rng.lognormal(0, sd, n)]


def compare(*args):
    p = subprocess.run([sys.executable, COMPARE, *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


class Compare(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name
        rng = np.random.default_rng(1)
        # commit A: a layout sweep (contiguous vs paged), 5 repeats each
        self.a = synth.write_run(os.path.join(self.d, "commit_a"), [
            ({"kv.layout": "contiguous"}, reps(rng, 100, 5)), ({"kv.layout": "paged"}, reps(rng, 130, 5))])
        # commit B: the same config, another build
        other = "2222222222222222222222222222222222222222"
        self.b = synth.write_run(os.path.join(self.d, "commit_b"), [
            ({"kv.layout": "contiguous"}, reps(rng, 100, 5)), ({"kv.layout": "paged"}, reps(rng, 131, 5))],
            provenance={"git_commit": other, "build_commit": other})

    def tearDown(self):
        self.tmp.cleanup()

    def test_refuses_mixed_provenance(self):
        rc, out, err = compare(self.a, self.b, "--metrics", "output_throughput")
        self.assertEqual(rc, 2, err)
        self.assertEqual(out, "")
        self.assertIn("git_commit", err)
        self.assertIn("build_commit", err)
        self.assertIn("111111111111", err)
        self.assertIn("222222222222", err)
        self.assertIn("--vary", err)

    def test_refuses_other_device_and_threads(self):
        c = synth.write_run(os.path.join(self.d, "gpu"),
                            [({"kv.layout": "contiguous"}, reps(np.random.default_rng(2), 90, 3))],
                            provenance={"device": "NVIDIA H100", "threads": "16"})
        rc, _, err = compare(self.a, c, "--vary", "git_commit")
        self.assertEqual(rc, 2)
        self.assertIn("device", err)
        self.assertIn("threads", err)
        self.assertIn("NVIDIA H100", err)

    def test_vary_accepts_and_lists_differences(self):
        rc, out, err = compare(self.a, self.b, "--vary", "git_commit", "--metrics", "output_throughput",
                               "--baseline", "git_commit=1111111")
        self.assertEqual(rc, 0, err)
        self.assertIn("git_commit [accepted, --vary]", err)
        self.assertIn("Difference: git_commit", out)
        lines = [x for x in out.splitlines() if x.startswith("| ") and "---" not in x]
        self.assertEqual(len(lines), 1 + 4)  # header + layout x commit
        self.assertIn("git_commit", lines[0])
        # same code, same config: the B/A ratio's CI should contain 1 (no marker)
        b_rows = [x for x in lines[1:] if "222222222222" in x]
        self.assertEqual(len(b_rows), 2)
        for row in b_rows:
            self.assertNotIn(" *", row, row)

    def test_ab_when_the_config_schema_changed(self):
        """Commit B knows a config key A lacks: its column is a group key, git_commit still the A/B."""
        path = os.path.join(self.b, "summary.csv")
        df = pd.read_csv(path)
        df.insert(df.columns.get_loc("completed"), "cuda_graphs", "false")
        df.to_csv(path, index=False)
        rc, out, err = compare(self.a, self.b, "--vary", "git_commit", "--baseline", "git_commit=1111",
                               "--metrics", "output_throughput", "--format", "csv")
        self.assertEqual(rc, 0, err)
        res = pd.read_csv(io.StringIO(out))
        self.assertIn("git_commit", res.columns)
        self.assertEqual(int(res["baseline"].sum()), 2)
        self.assertEqual(int(res["ratio"].notna().sum()), 4)

    def test_aa_ratio_contains_one(self):
        """Two copies of one run, split by folder: the ratio's CI contains 1."""
        import shutil
        copy = shutil.copytree(self.a, os.path.join(self.d, "copy"))
        rc, out, err = compare(self.a, copy, "--vary", "run", "--format", "csv", "--baseline", "run=commit_a",
                               "--metrics", "output_throughput,ttft_p99_ms")
        self.assertEqual(rc, 0, err)
        df = pd.read_csv(io.StringIO(out))
        other = df[~df["baseline"]]
        self.assertEqual(len(other), 4)
        self.assertTrue(((other["ratio_lo"] <= 1) & (1 <= other["ratio_hi"])).all(), other)
        self.assertFalse(other["ratio_excludes_1"].any())

    def test_ratio_marks_a_real_difference(self):
        rc, out, err = compare(self.a, "--baseline", "kv.layout=contiguous", "--metrics", "output_throughput")
        self.assertEqual(rc, 0, err)
        row = [x for x in out.splitlines() if x.startswith("| paged")][0]
        self.assertRegex(row, r"1\.[23]\d\d \[1\.\d+, 1\.\d+\] \*")
        base = [x for x in out.splitlines() if x.startswith("| contiguous")][0]
        self.assertIn("baseline", base)
        self.assertRegex(base, r"\| 5 \|")  # n

    def test_latex(self):
        rc, out, err = compare(self.a, self.b, "--vary", "git_commit", "--format", "latex", "--baseline",
                               "kv.layout=contiguous", "--metrics", "output_throughput,ttft_p99_ms,kv_waste")
        self.assertEqual(rc, 0, err)
        body = "\n".join(x for x in out.splitlines() if not x.startswith("%"))
        self.assertEqual(body.count("{"), body.count("}"), body)
        depth = 0
        for ch in body:
            depth += {"{": 1, "}": -1}.get(ch, 0)
            self.assertGreaterEqual(depth, 0)
        for cmd in ("\\begin{tabular}", "\\toprule", "\\midrule", "\\bottomrule", "\\end{tabular}"):
            self.assertEqual(body.count(cmd), 1, cmd)
        rows = body.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
        self.assertEqual(len(rows), 4)  # one per group: 2 layouts x 2 commits
        self.assertTrue(all(r.endswith("\\\\") for r in rows))
        cols = body.split("\\begin{tabular}{")[1].split("}")[0]
        for r in rows:
            self.assertEqual(r.count("&") + 1, len(cols), r)
        self.assertNotRegex(body, r"(?<!\\)_", "unescaped underscore")
        self.assertIn("kv\\_waste", body)
        self.assertIn("$^{*}$", body)
        self.assertNotIn("<", body.replace("$n<3$", ""))

    def test_markdown_reports_no_interval_below_three(self):
        one = synth.write_run(os.path.join(self.d, "single"),
                              [({"kv.layout": "contiguous"}, reps(np.random.default_rng(3), 100, 2))])
        rc, out, err = compare(one, "--metrics", "output_throughput")
        self.assertEqual(rc, 0, err)
        self.assertIn("(n < 3: no interval)", out)

    def test_within_run_interval(self):
        rng = np.random.default_rng(4)
        one = synth.write_run(os.path.join(self.d, "long"), [({"kv.layout": "contiguous"}, reps(rng, 100, 1))],
                              requests={(0, 0): list(rng.lognormal(5, 0.2, 50))})
        rc, out, err = compare(one, "--metrics", "ttft_median_ms", "--within-run")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"\[\d+(\.\d+)?, \d+(\.\d+)?\]†")

    def test_interrupted(self):
        c = synth.write_run(os.path.join(self.d, "cut"), [({}, reps(np.random.default_rng(5), 100, 3))],
                            status="interrupted")
        rc, _, err = compare(c)
        self.assertEqual(rc, 2)
        self.assertIn("interrupted", err)
        self.assertIn("--include-interrupted", err)
        rc, out, err = compare(c, "--include-interrupted")
        self.assertEqual(rc, 0, err)

    def test_errors_exit_2(self):
        rc, _, err = compare(os.path.join(self.d, "nope"))
        self.assertEqual(rc, 2)
        self.assertIn("no such run folder", err)
        rc, _, err = compare(self.a, "--metrics", "output_thruput")
        self.assertEqual(rc, 2)
        self.assertIn("did you mean 'output_throughput'", err)
        rc, _, err = compare(self.a, "--baseline", "kv.layout=blocked")
        self.assertEqual(rc, 2)
        self.assertIn("matches no rows", err)
        self.assertIn("contiguous", err)
        rc, _, err = compare(self.a, "--baseline", "kv.layot=paged")
        self.assertEqual(rc, 2)
        self.assertIn("did you mean 'kv.layout'", err)
        rc, _, err = compare(self.a, "--vary", "git_comit")
        self.assertEqual(rc, 2)
        self.assertIn("did you mean 'git_commit'", err)

    def test_out_file_not_overwritten(self):
        path = os.path.join(self.d, "t.tex")
        self.assertEqual(compare(self.a, "--format", "latex", "--out", path)[0], 0)
        self.assertTrue(os.path.getsize(path) > 0)
        rc, _, err = compare(self.a, "--format", "latex", "--out", path)
        self.assertEqual(rc, 2)
        self.assertIn("--force", err)
        self.assertEqual(compare(self.a, "--format", "latex", "--out", path, "--force")[0], 0)

    def test_tolerates_new_columns(self):
        """run_index and round (per-row bookkeeping) and an `order` config key do not become groups."""
        rng = np.random.default_rng(6)
        c = synth.write_run(os.path.join(self.d, "rounds"), [
            ({"kv.layout": "contiguous"}, reps(rng, 100, 4)), ({"kv.layout": "paged"}, reps(rng, 120, 4))],
            extra_columns={"run_index": 3, "round": 1})
        df = pd.read_csv(os.path.join(c, "summary.csv"))
        df["round"] = df["repeat"] % 2
        df["run_index"] = range(len(df))
        df.insert(df.columns.get_loc("completed"), "order", "interleaved")
        df.to_csv(os.path.join(c, "summary.csv"), index=False)
        os.remove(os.path.join(c, "config.yaml"))  # the column-range fallback
        rc, out, err = compare(c, "--format", "csv", "--metrics", "output_throughput")
        self.assertEqual(rc, 0, err)
        res = pd.read_csv(io.StringIO(out))
        self.assertEqual(list(res.columns[:2]), ["kv.layout", "n"])
        self.assertEqual(list(res["n"]), [4, 4])


if __name__ == "__main__":
    unittest.main(verbosity=2)
