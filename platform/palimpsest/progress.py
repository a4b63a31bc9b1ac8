"""What the library tells the user while it works: lines and progress events. The CLI decides how to show them.

Library code never prints (a test walks the sources: `tests/test_only_cli_prints.py`). It calls

    progress.say("sweep point epsilon-8")        # a line: "[palimpsest] sweep point epsilon-8"
    progress.warn("trial folder … not uploaded")  # "[palimpsest] warning: trial folder … not uploaded"
    progress.begin(key, "trials", total=12)       # a piece of long work with a known size
    progress.update(key, done=3, note="acc 0.61") # how far it is (or advance=1)
    progress.end(key)                             # finished

Lines go through the `logging` logger "palimpsest.progress" (level INFO; set it to WARNING
to keep only warnings, or attach a handler of your own). Its one handler is set up here, once
per process, and the logger does not propagate: Ray Train's workers configure the root logger
with a console handler of their own (and, with Ray Train's print patch on, reroute print()
through it), so a propagating logger or a print() would show each line twice, or drop it below
the run's log level. The handler writes "[palimpsest] <line>" itself to the process's
stdout, read at each line (pytest's capture, typer's CliRunner). In a Ray Train worker or a
Tune trial that stdout is the worker's log, which Ray streams to the driver's terminal
(`log_to_driver`), as before.

Progress events go to the display installed in this process (`display`, below), else — in a
Ray worker of a driver that shows one — to that display's channel: a small named actor the
driver creates (`CHANNEL_NAME`, in the job's namespace, no CPU), which a worker looks up once
and sends to without waiting (`actor.put.remote(event)`); the driver drains it twice a
second. The training loop sends at its log points only (every `log_every` steps), never per
step. Without a display (tests, the library used from Python, `palimpsest submit`'s job,
output that is not a terminal) events are dropped and the lines are the whole story.

The CLI wraps a run in `display`:

    from palimpsest import progress

    with progress.display(out):          # out: the CLI's rich Console for stdout
        summary = runner.run(spec, prepared, folder, use_ray=not no_ray)   # or run_search(...)

On a terminal (`out.is_terminal`) that shows a rich progress display — done/total, elapsed,
ETA and the latest values per piece of work (training steps, requests, trials, sweep points,
bench sections) — with the lines printed above it; otherwise it prints the lines as they come,
as today (CI, logs, pipes, the log `palimpsest submit` streams). Start Ray before entering it
(the channel is created on entry when Ray is up, else as soon as Ray is).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from typing import Any, Iterator

LOGGER_NAME = "palimpsest.progress"
PREFIX = "[palimpsest] "
CHANNEL_NAME = "palimpsest-progress"  # the driver's event channel (a named actor, one per Ray job namespace)
POLL_S = 0.5  # how often the driver drains the channel


# ----------------------------------------------------------------------------- the library's side


def say(text: str) -> None:
    """One line for the user ("[palimpsest] " + text)."""
    _logger().info(text)


def warn(text: str) -> None:
    """A warning line for the user ("[palimpsest] warning: " + text)."""
    _logger().warning(f"warning: {text}")


def begin(key: str, description: str, total: int | None, *, done: int = 0, transient: bool = False) -> None:
    """Long work starts: `total` units (None: not known in advance), `done` of them already done (a resume).

    `key` names it in updates; make it unique among concurrent work (a run folder's name in it).
    `transient`: hidden once ended (one task's steps), else kept at its final count.
    """
    _send({"op": "begin", "key": key, "description": description, "total": total, "done": done,
           "transient": transient})


def update(key: str, *, done: int | None = None, advance: int = 0, total: int | None = None,
           note: str | None = None, description: str | None = None) -> None:
    """How far `key` is: `done` units (or `advance` more), a new `total`, the latest values (`note`)."""
    event: dict[str, Any] = {"op": "update", "key": key, "advance": advance}
    for name, value in (("done", done), ("total", total), ("note", note), ("description", description)):
        if value is not None:
            event[name] = value
    _send(event)


def end(key: str) -> None:
    """`key` is over (its clock stops; a transient one is hidden)."""
    _send({"op": "end", "key": key})


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """'1 request', '3 requests' (`plural` where adding s is wrong)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


# ----------------------------------------------------------------------------- lines


class _Lines(logging.Handler):
    """The logger's one handler: each record to the installed display, else to this process's stdout."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            (_SINK or _STDOUT).line(record.getMessage(), record.levelno)
        except Exception:  # noqa: BLE001 - a broken pipe or a closed display must not stop the run
            self.handleError(record)


def _logger() -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, _Lines) for h in logger.handlers):
        with _LOCK:
            if not any(isinstance(h, _Lines) for h in logger.handlers):
                logger.addHandler(_Lines())
                logger.propagate = False
                if logger.level == logging.NOTSET:
                    logger.setLevel(logging.INFO)
    return logger


class _Stdout:
    """Where lines go without a display: this process's stdout as it is now (Ray streams a worker's)."""

    def line(self, text: str, level: int) -> None:
        stream = sys.stdout
        stream.write(PREFIX + text + "\n")
        stream.flush()

    def event(self, event: dict) -> None:
        pass


_STDOUT = _Stdout()
_SINK: Any = None  # the display installed in this process (`display`)
_LOCK = threading.RLock()


# ----------------------------------------------------------------------------- events


def _send(event: dict) -> None:
    sink = _SINK
    if sink is not None:
        sink.event(event)
        return
    channel = _remote_channel()
    if channel is not None:
        try:
            channel.put.remote(event)  # fire and forget: the caller never waits on the driver
        except Exception:  # noqa: BLE001 - the display went away; the lines still tell the story
            pass


_LOOKED_UP: list = []  # [handle or None, when] once this process looked the channel up
LOOKUP_TTL_S = 10.0  # a process that outlives a display (a pooled Ray worker) looks again after this long


def _remote_channel():
    """The driver's channel, looked up at most every LOOKUP_TTL_S (None: no display on the driver, or not in Ray)."""
    if _LOOKED_UP and time.monotonic() - _LOOKED_UP[1] < LOOKUP_TTL_S:
        return _LOOKED_UP[0]
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None  # (not cached: Ray may start later in this process)
    try:
        handle = ray.get_actor(CHANNEL_NAME)
    except Exception:  # noqa: BLE001 - ValueError: no display on the driver
        handle = None
    _LOOKED_UP[:] = [handle, time.monotonic()]
    return handle


class Channel:
    """The driver's event channel: workers put events, the driver drains them."""

    LIMIT = 10_000  # events kept between drains (a driver that stopped draining loses the oldest)

    def __init__(self):
        self.events: list[dict] = []

    def put(self, event: dict) -> None:
        self.events.append(event)
        if len(self.events) > self.LIMIT:
            del self.events[: len(self.events) - self.LIMIT]

    def drain(self) -> list[dict]:
        events, self.events = self.events, []
        return events


# ----------------------------------------------------------------------------- the CLI's side


@contextlib.contextmanager
def display(console=None) -> Iterator[Any]:
    """Show the library's lines and progress for the duration of the block (see the module's docstring).

    `console`: a rich Console (default: a new one on stdout). A terminal gets the rich display,
    anything else the plain lines. Yields the display (its `lines` and `event` methods).
    """
    from rich.console import Console

    console = console or Console()
    shown = _Live(console) if console.is_terminal else _Plain(console)
    global _SINK
    _logger()
    with _LOCK:
        previous, _SINK = _SINK, shown
    try:
        with shown:
            yield shown
    finally:
        with _LOCK:
            _SINK = previous


class _Plain:
    """Not a terminal: each line printed as it comes (today's output); progress events dropped."""

    def __init__(self, console):
        self.console = console

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def line(self, text: str, level: int) -> None:
        self.console.print(PREFIX + text, markup=False, highlight=False, soft_wrap=True)

    def event(self, event: dict) -> None:
        pass


class _Live:
    """A terminal: a rich Progress with one row per piece of work, the lines printed above it.

    Events from this process arrive by direct call; from Ray workers, through the channel
    (an actor this display creates and drains from a thread).
    """

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                 TimeElapsedColumn(), _eta_column(), TextColumn("{task.fields[note]}"),
                                 console=console, refresh_per_second=4)
        self.tasks: dict[str, Any] = {}  # key -> rich task id
        self.transient: set[str] = set()
        self.lock = threading.RLock()
        self.channel = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        self.progress.start()
        self._channel()  # before any worker looks for it, when Ray is up (else the poll makes it once Ray is)
        self._thread = threading.Thread(target=self._poll, name="palimpsest-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if kind is None:
            self._drain()
            self._close_channel()
        # After Ctrl-C or an error the CLI's own last words come first, and workers still going down may
        # send: the channel is left to end with the driver's job (it is not detached).
        self.progress.stop()
        return False

    # lines and events

    def line(self, text: str, level: int) -> None:
        self.progress.console.print(PREFIX + text, markup=False, highlight=False, soft_wrap=True)

    def event(self, event: dict) -> None:
        with self.lock:
            key, op = event.get("key"), event.get("op")
            if op == "begin":
                if key in self.tasks:  # begun again (a restarted attempt): start over
                    self.progress.remove_task(self.tasks.pop(key))
                self.tasks[key] = self.progress.add_task(event.get("description") or key, total=event.get("total"),
                                                         completed=event.get("done", 0), note="",
                                                         base=event.get("done", 0))
                if event.get("transient"):
                    self.transient.add(key)
                return
            if key not in self.tasks:  # an update of work begun before this display (or lost on the way)
                self.tasks[key] = self.progress.add_task(event.get("description") or key, total=event.get("total"),
                                                         completed=0, note="", base=event.get("done", 0))
            task = self.tasks[key]
            if op == "update":
                changes: dict[str, Any] = {}
                if "done" in event:
                    changes["completed"] = event["done"]
                if event.get("advance"):
                    changes["advance"] = event["advance"]
                for name in ("total", "description", "note"):
                    if name in event:
                        changes[name] = event[name]
                self.progress.update(task, **changes)
            elif op == "end":  # (at its count: a search its time budget stopped says so)
                self.progress.stop_task(task)
                if key in self.transient:
                    self.progress.update(task, visible=False)

    def rows(self) -> list[dict]:
        """What the display shows, per piece of work (for tests): description, done, total, visible."""
        with self.lock:
            return [{"key": key, "description": t.description, "done": t.completed, "total": t.total,
                     "visible": t.visible}
                    for key, task in self.tasks.items() if (t := self._task(task)) is not None]

    def _task(self, task_id):
        return next((t for t in self.progress.tasks if t.id == task_id), None)

    # the channel from Ray workers

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            self._drain()

    def _drain(self) -> None:
        channel = self._channel()
        if channel is None:
            return
        import ray

        try:
            events = ray.get(channel.drain.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - Ray going down at the end of a run: the lines said it all
            return
        for event in events:
            self.event(event)

    def _channel(self):
        if self.channel is not None:
            return self.channel
        ray = sys.modules.get("ray")
        if ray is None or not ray.is_initialized():
            return None
        try:
            self.channel = ray.remote(num_cpus=0)(Channel).options(name=CHANNEL_NAME, get_if_exists=True).remote()
        except Exception:  # noqa: BLE001 - no channel: workers' progress shows as lines only
            self.channel = None
        return self.channel

    def _close_channel(self) -> None:
        if self.channel is None:
            return
        try:
            import ray

            ray.kill(self.channel)
        except Exception:  # noqa: BLE001 - Ray already down
            pass
        self.channel = None
        _LOOKED_UP.clear()


def _eta(task) -> str:
    """Time left at the rate since the work began (units done here, not those a resume found done)."""
    if task.total is None:
        return ""
    if task.finished:
        return "done"
    if getattr(task, "stop_time", None) is not None:  # ended short of its total (a time budget, an error)
        return "stopped"
    done = task.completed - task.fields.get("base", 0)
    elapsed = task.elapsed
    if not elapsed or done <= 0:
        return "ETA -:--:--"
    left = max(task.total - task.completed, 0) * elapsed / done
    return f"ETA {_clock(left)}"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _eta_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class EtaColumn(ProgressColumn):
        """Time left: the remaining units at the mean rate so far (trials minutes apart still get one)."""

        max_refresh = 1.0

        def render(self, task):
            return Text(_eta(task), style="progress.remaining")

    return EtaColumn()


