"""One runner per job kind: `prepare(spec)` (may raise DataError) and `run(spec, prepared, folder)`."""

from palimpsest.runners import bench, continual, privacy_sweep, rl, train, unlearn

RUNNERS = {"train": train, "continual": continual, "privacy_sweep": privacy_sweep, "unlearn": unlearn, "rl": rl,
           "bench": bench}
