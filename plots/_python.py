"""Shared by the plot scripts: import their third-party modules under a working interpreter, or say
once, in one line, why not.

The scripts keep `#!/usr/bin/env python3`, so `python3 plots/X.py` may start an interpreter (a pyenv
one, a venv) without Debian's packages. `require()` then re-runs the script once under
/usr/bin/python3 when that is another interpreter; if that one lacks them too, or the script is
imported as a module, it prints (or raises) one line naming /usr/bin/python3 and the Debian
packages. Standard library only, so it always imports.
"""
import importlib
import os
import sys

SYSTEM_PYTHON = "/usr/bin/python3"
DEBIAN = {"numpy": "python3-numpy", "pandas": "python3-pandas", "matplotlib": "python3-matplotlib",
          "scipy": "python3-scipy"}
_GUARD = "ABLATE_PLOTS_REEXEC"  # set in the re-run, so it happens at most once


def message(script, modules, err):
    pkgs = " ".join(DEBIAN.get(m, m) for m in modules)
    return (f"{script}: error: {err} (in {sys.executable}); run it with {SYSTEM_PYTHON} "
            f"(Debian: apt-get install {pkgs})")


def require(modules, script_file, main):
    """Imports `modules`. On ImportError: when `main` (the script runs as a program) and
    /usr/bin/python3 is another, untried interpreter, re-executes the script there; otherwise exits
    with status 1 and one line on stderr (main) or raises ImportError with that line (imported)."""
    try:
        for m in modules:
            importlib.import_module(m)
        return
    except ImportError as e:
        err = e
    script = os.path.basename(script_file)
    line = message(script, modules, err)
    if not main:
        raise ImportError(line)
    here = os.path.realpath(sys.executable or "")
    if (not os.environ.get(_GUARD) and os.access(SYSTEM_PYTHON, os.X_OK)
            and here != os.path.realpath(SYSTEM_PYTHON)):
        env = dict(os.environ, **{_GUARD: "1"})
        env.pop("PYTHONHOME", None)  # another interpreter's home would break the system one
        try:
            os.execve(SYSTEM_PYTHON, [SYSTEM_PYTHON, os.path.abspath(script_file), *sys.argv[1:]], env)
        except OSError:
            pass  # fall through to the one-line message
    print(line, file=sys.stderr)
    sys.exit(1)
