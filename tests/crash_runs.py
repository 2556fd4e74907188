"""Helper for tests/test_fault_tolerance.py: several ``atzoo`` command lines, each in its own
process, for the price of one interpreter start.

Usage: ``python tests/crash_runs.py JOBS.json`` where the file holds a list of
``{"name", "argv", "crash_at", "log"}``. The helper imports atzoo once, then forks one
child per job, one after the other. A child sets ``ATZOO_TEST_CRASH_AT`` to ``crash_at``
(absent when null), sends its stdout and stderr to ``log``, and runs
``atzoo.cli.run(argv)`` -- what ``python -m atzoo ARGV`` runs -- so a crash hook kills a
real, separate training process with SIGKILL. The exit codes (negative: killed by that
signal, as in :mod:`subprocess`) are written to ``JOBS.json.result`` as ``{name: code}``.

Forking saves the 5-10 s that importing torch, accelerate and scikit-learn costs per
process on a loaded two-core machine; the parent computes nothing before forking.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

CRASH_ENV = "ATZOO_TEST_CRASH_AT"


def warm_imports() -> None:
    """Imports what a training run needs, so that every child starts with it."""
    import torch

    torch.set_num_threads(1)  # the test process is single-threaded too: same kernels
    import accelerate  # noqa: F401

    import sklearn.datasets  # noqa: F401  (the digits)
    import torch._inductor  # noqa: F401  (imported by torch.use_deterministic_algorithms)

    import atzoo.cli
    import atzoo.data  # noqa: F401
    import atzoo.engine  # noqa: F401
    from atzoo.registry import load_builtins

    atzoo.cli._register_commands()
    load_builtins()


def child(job: dict[str, Any]) -> int:
    """Runs one job in the forked child; returns its exit code."""
    from atzoo.cli import run

    os.environ.pop(CRASH_ENV, None)
    if job.get("crash_at"):
        os.environ[CRASH_ENV] = job["crash_at"]
    fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return run(list(job["argv"]))


def run_job(job: dict[str, Any]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child never returns into the loop below
        code = 1
        try:
            code = child(job)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def main(jobs_file: str) -> None:
    jobs = json.loads(Path(jobs_file).read_text())
    warm_imports()
    results = {job["name"]: run_job(job) for job in jobs}
    Path(jobs_file + ".result").write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
