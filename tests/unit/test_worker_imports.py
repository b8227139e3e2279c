"""Importing the worker does nothing but define it: no environment written, no settings or
providers file read. What a worker checks and sets up, it does when it starts."""

import os
import pkgutil
import subprocess
import sys

import worker


def test_importing_every_worker_module_leaves_the_environment_and_reads_no_settings(tmp_path):
    """With metrics on (which once chose PROMETHEUS_MULTIPROC_DIR at import), an unreadable
    providers file and settings that do not validate (both once checked at import), every
    worker module imports and os.environ is as it was."""
    modules = sorted(m.name for m in pkgutil.walk_packages(worker.__path__, "worker."))
    assert {"worker.app", "worker.metrics", "worker.tasks"} <= set(modules)
    code = (
        "import importlib, os, sys;"
        "before = dict(os.environ);"
        f"[importlib.import_module(m) for m in {['worker', *modules]!r}];"
        "changed = {k for k in before.keys() | os.environ.keys()"
        "           if before.get(k) != os.environ.get(k)};"
        "print(sorted(changed)); sys.exit(1 if changed else 0)"
    )
    env = {
        **os.environ,
        "VIDEOQUEUE_METRICS_PORT": "9",
        "VIDEOQUEUE_PROVIDERS_FILE": str(tmp_path / "missing.toml"),
        "VIDEOQUEUE_MAX_IN_FLIGHT": "not a number",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
