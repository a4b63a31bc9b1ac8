"""One runner per job kind: `prepare(spec)` (may raise DataError) and `run(spec, prepared, folder)`."""

from palimpsest.runners import continual, train

RUNNERS = {"train": train, "continual": continual}
