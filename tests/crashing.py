"""Run `python -m palimpsest.cli ARGS` on an unlearn job and SIGKILL its process group at a chosen request and
step: no handler runs, the crash a power cut would be. Deterministic, unlike a kill raced against a running job.

The trigger is the runner's own test hook, `FailAt` (`runners.unlearn.run(..., fail_at=...)`, raised by the
training loop on rank 0 at that task and step of the unlearning fit, never in the target's or retain models'
training); here the injected failure becomes a SIGKILL instead of an exception:

    python tests/crashing.py TASK STEP MARKER -- ARGS...
"""

from __future__ import annotations

import functools
import os
import signal
import sys


def main(argv: list[str]) -> None:
    task, step, marker = int(argv[0]), int(argv[1]), argv[2]
    assert argv[3] == "--", argv
    import palimpsest.train.loop as loop
    from palimpsest.runners import unlearn
    from palimpsest.train.config import FailAt

    inject = loop._maybe_inject_failure

    def kill_instead(*args) -> None:
        try:
            inject(*args)
        except RuntimeError:  # the injected failure (its marker written): die as a power cut would
            os.killpg(os.getpgid(0), signal.SIGKILL)

    loop._maybe_inject_failure = kill_instead
    unlearn.run = functools.partial(unlearn.run, fail_at=FailAt(task=task, step=step, marker=marker))
    from palimpsest.cli import app

    app(argv[4:], prog_name="palimpsest")


if __name__ == "__main__":
    main(sys.argv[1:])
