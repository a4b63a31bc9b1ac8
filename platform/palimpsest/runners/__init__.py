"""One runner per job kind: `prepare(spec)` (may raise DataError) and `run(spec, prepared, folder)`.

`palimpsest.kinds` names each kind's runner; they are imported when a job of their kind runs.
"""
