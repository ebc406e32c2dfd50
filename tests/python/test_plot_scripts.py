#!/usr/bin/env python3
"""The plot scripts' shared behaviour: the committed figures are only written when asked for
(default --out under the git-ignored plots/out/), speculative.py's documented command works
against results/reference/speculative/, and a missing module gives one clear line naming
/usr/bin/python3 and the Debian packages (or a re-run under /usr/bin/python3).
Run: /usr/bin/python3 tests/python/test_plot_scripts.py  (about 20 s)."""
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import unittest

import synth

PLOTS, ROOT = synth.PLOTS, synth.ROOT
SCRIPTS = ["plot.py", "stats.py", "compare.py", "attention.py", "ablations.py", "gpu_attention.py", "speculative.py"]
FIGURE_SCRIPTS = {  # script -> committed figures it can regenerate
    "attention.py": ["attention_prefill.png", "attention_prefill.pdf"],
    "ablations.py": ["batching_offline.png", "batching_throughput_vs_rate.png", "batching_latency_vs_rate.png",
                     "kv_waste_per_layout.png", "kv_concurrency_per_layout.png", "prefix_cache.png",
                     "precision_weights.png", "precision_weights_avx512-bf16.png", "precision_kv.png", "precision_grid.png",
                     "gguf_types.png"],
    "gpu_attention.py": ["gpu_attention.png"],
    "speculative.py": ["speculative.png", "speculative.pdf"],
}
SPEC_ARGS = ["results/reference/speculative/simulated", "--acceptance", "results/reference/speculative/acceptance"]


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, **kw)


class Outputs(unittest.TestCase):
    def test_default_out_is_untracked(self):
        for script in FIGURE_SCRIPTS:
            p = run([sys.executable, os.path.join(PLOTS, script), "--help"])
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("plots/out", p.stdout.replace("\n", " "), script)
            self.assertIn("--committed", p.stdout, script)
        if shutil.which("git") and run(["git", "rev-parse", "--git-dir"]).returncode == 0:
            p = run(["git", "check-ignore", "-q", "plots/out/x.png"])
            self.assertEqual(p.returncode, 0, "plots/out/ is not git-ignored")

    def test_scripts_write_where_told_and_leave_committed_figures(self):
        committed = [f for fs in FIGURE_SCRIPTS.values() for f in fs if os.path.exists(os.path.join(PLOTS, f))]
        before = {f: os.stat(os.path.join(PLOTS, f)).st_mtime_ns for f in committed}
        with tempfile.TemporaryDirectory() as tmp:
            for script, figures in FIGURE_SCRIPTS.items():
                extra = SPEC_ARGS if script == "speculative.py" else []
                out = os.path.join(tmp, "ablations") if script == "ablations.py" else os.path.join(tmp, script[:-3])
                p = run([sys.executable, os.path.join(PLOTS, script), *extra, "--out", out])
                self.assertEqual(p.returncode, 0, f"{script}: {p.stderr}")
                for f in figures:
                    ext = os.path.splitext(f)[1]
                    want = os.path.join(out, f) if script == "ablations.py" else out + ext
                    self.assertTrue(os.path.getsize(want) > 0, want)
        after = {f: os.stat(os.path.join(PLOTS, f)).st_mtime_ns for f in before}
        self.assertEqual(before, after)

    def test_speculative_docstring_command_works(self):
        """The command in speculative.py's docstring, run as written but with --out elsewhere."""
        with open(os.path.join(PLOTS, "speculative.py")) as f:
            doc = f.read().split('"""')[1]
        m = re.search(r"(/usr/bin/python3 plots/speculative\.py.*?)(?:\n(?!\s{4,}))", doc, re.S)
        self.assertIsNotNone(m, "no example command in speculative.py's docstring")
        argv = shlex.split(m.group(1).replace("\\\n", " "))
        self.assertNotIn("--committed", argv)
        with tempfile.TemporaryDirectory() as tmp:
            p = run([sys.executable, *argv[1:], "--out", os.path.join(tmp, "s")])
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("max |deviation|", p.stdout)
            self.assertTrue(os.path.exists(os.path.join(tmp, "s.png")))
        with open(os.path.join(ROOT, "results", "reference", "speculative", "README.md")) as f:
            readme = f.read()
        for path in re.findall(r"results/reference/speculative/[\w/]+\.csv", readme):
            self.assertTrue(os.path.exists(os.path.join(ROOT, path)), path)


class Interpreter(unittest.TestCase):
    def test_missing_module_one_line(self):
        """A module that fails to import: exit 1, one stderr line naming /usr/bin/python3 and the packages."""
        with tempfile.TemporaryDirectory() as tmp:
            for mod in ("numpy", "pandas"):
                os.makedirs(os.path.join(tmp, mod))
                with open(os.path.join(tmp, mod, "__init__.py"), "w") as f:
                    f.write(f"raise ImportError(\"No module named '{mod}'\")\n")
            env = dict(os.environ, PYTHONPATH=tmp, ABLATE_PLOTS_REEXEC="1")
            for script in SCRIPTS:
                p = run([sys.executable, os.path.join(PLOTS, script), "--help"], env=env)
                self.assertEqual(p.returncode, 1, script)
                lines = p.stderr.strip().splitlines()
                self.assertEqual(len(lines), 1, f"{script}: {p.stderr}")
                self.assertIn("/usr/bin/python3", lines[0])
                self.assertIn("python3-pandas", lines[0])
                self.assertEqual(p.stdout, "")

    def test_reexec_under_system_python(self):
        """Started by another python3 without the modules (a pyenv one), a script re-runs itself
        under /usr/bin/python3."""
        other = None
        for cand in (shutil.which("python3"), os.path.expanduser("~/.pyenv/shims/python3")):
            if cand and os.path.exists(cand) and os.path.realpath(cand) != os.path.realpath("/usr/bin/python3"):
                if run([cand, "-c", "import numpy"]).returncode != 0:
                    other = cand
                    break
        if other is None or not os.access("/usr/bin/python3", os.X_OK):
            self.skipTest("no second python3 without numpy here")
        env = {k: v for k, v in os.environ.items() if k != "ABLATE_PLOTS_REEXEC"}
        p = run([other, os.path.join(PLOTS, "stats.py"), "--help"], env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("usage: stats.py", p.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
