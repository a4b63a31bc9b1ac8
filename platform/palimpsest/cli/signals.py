"""Ctrl-C and SIGTERM during a run: recorded as `interrupted` (exit 130 / 143), whatever a library does."""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
import time


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or `kill`) during a run: recorded like Ctrl-C, exit 143."""


_REAL_SIGNAL = signal.signal


class Interrupts:
    """While active, Ctrl-C (and SIGTERM) end up as a KeyboardInterrupt (`Terminated`) or a
    failed Ray Train run that the CLI records as `interrupted`, whatever handler a library
    installs meanwhile.

    Ray Train's `fit()` installs its own SIGINT handler (ray/train/v2/api/data_parallel_trainer.py,
    `_register_sigint_handler`): it aborts the run and calls sys.exit(0) inside the handler,
    and the process ends with status 1 before the CLI can mark the folder. So while this
    block runs `signal.signal` keeps our handlers (Ray's DeferSigint patches it the same way)
    and remembers the library's SIGINT handler.

    A KeyboardInterrupt raised inside Ray's own code can be dropped by its C++ `ray.get`, or
    leave the core worker half set up (a segfault at exit). So when the main thread is inside
    Ray, the first signal stops the Ray Train run from a helper thread (`_stop_library_run`:
    `fit()` then raises, and the CLI records `interrupted`), and the interrupt itself is raised
    only once the main thread is back in our code (`check()` at the safe points, a retry every
    RETRY_S) — or at once on a second Ctrl-C, or after FORCE_AFTER_S.
    """

    RETRY_S = 1.0
    FORCE_AFTER_S = 15.0

    def __init__(self):
        self.requested: int | None = None  # the signal received, if any
        self._since = 0.0
        self._nudged = False
        self._aborting = False
        self._caught = threading.Event()
        self._previous: dict = {}
        self._library_sigint = None

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = _REAL_SIGNAL(signum, self._handle)

        def guarded(signum, handler):
            if signum in self._previous:
                if signum == signal.SIGINT and callable(handler) and handler is not self._handle:
                    self._library_sigint = handler
                return self._handle  # keep ours; the caller sees what it would have replaced
            return _REAL_SIGNAL(signum, handler)

        signal.signal = guarded
        return self

    def __exit__(self, *exc) -> None:
        self._caught.set()
        if self._previous:
            signal.signal = _REAL_SIGNAL
            for signum, handler in self._previous.items():
                _REAL_SIGNAL(signum, handler if handler is not None else signal.SIG_DFL)

    def check(self) -> None:
        """At a safe point: raise the interrupt received while the main thread was inside Ray."""
        if self.requested is not None and not self._caught.is_set():
            raise Terminated if self.requested == signal.SIGTERM else KeyboardInterrupt

    def reassert(self) -> None:
        """Put our handlers back at the OS level: Ray's core worker installs a C++ handler for
        SIGTERM (a stack dump, then abort) under Python's feet when it connects."""
        for signum in self._previous:
            _REAL_SIGNAL(signum, self._handle)

    def caught(self) -> None:
        """The CLI has the interrupt (or the run ended): ignore further ones while it writes the folder."""
        self._caught.set()
        for signum in self._previous:
            _REAL_SIGNAL(signum, signal.SIG_IGN)

    def _handle(self, signum, frame) -> None:
        if self._caught.is_set():
            return
        nudge, self._nudged = self._nudged, False
        first = self.requested is None
        if first:
            from palimpsest.run_folder import INTERRUPTED

            INTERRUPTED.set()
            self.requested, self._since = signum, time.monotonic()
            threading.Thread(target=self._insist, name="palimpsest-interrupt", daemon=True).start()
        forced = (not first and not nudge) or time.monotonic() - self._since > self.FORCE_AFTER_S
        if forced or not _inside_ray(frame):
            raise Terminated if self.requested == signal.SIGTERM else KeyboardInterrupt
        if first:
            sys.stderr.write("\nstopping (Ctrl-C again to stop at once)\n")
        if self._library_sigint is not None and not self._aborting:  # Ray Train's abort, off the main thread
            self._aborting = True
            threading.Thread(target=_stop_library_run, args=(self._library_sigint,),
                             name="palimpsest-abort", daemon=True).start()

    def _insist(self) -> None:
        while not self._caught.wait(self.RETRY_S):
            self._nudged = True
            _thread.interrupt_main(self.requested)


def _stop_library_run(handler) -> None:
    """Stop what a library's SIGINT handler would stop, from a helper thread.

    Ray Train's handler closes over the run's controller actor: killing it takes the worker
    group with it and `fit()` raises at once (the handler's own graceful abort can take 15 s
    here). Without an actor handle in reach, call the handler itself.
    """
    try:
        import ray
        from ray.actor import ActorHandle

        for cell in getattr(handler, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if isinstance(value, ActorHandle):
                ray.kill(value, no_restart=True)
                return
    except Exception:  # noqa: BLE001 - fall back to the handler
        pass
    try:
        handler(signal.SIGINT, None)
    except BaseException:  # noqa: BLE001 - Ray's handler ends with sys.exit(0); the CLI records the rest
        pass


def _inside_ray(frame) -> bool:
    """Whether the main thread, stopped at `frame`, is running Ray's code."""
    ray = sys.modules.get("ray")
    if ray is None or not getattr(ray, "__file__", None):
        return False
    root = os.path.dirname(ray.__file__) + os.sep
    while frame is not None:
        if frame.f_code.co_filename.startswith(root):
            return True
        frame = frame.f_back
    return False
