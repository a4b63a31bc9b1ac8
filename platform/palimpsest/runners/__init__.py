"""One runner per job kind: `prepare(spec)` (may raise DataError) and `run(spec, prepared, folder)`."""

from palimpsest.runners import train

RUNNERS = {"train": train}
