"""Machine unlearning: the methods (one file each, declaring `METHOD = MethodInfo(...)`), their shared
objectives (`base.py`, `objectives.py`), gradient-projected unlearning (`gu.py`), the TOFU/MUSE
evaluation (`evaluation.py`) and the forget-request ledger (`ledger.py`).

Methods are found by `palimpsest.train.methods.discover("palimpsest.unlearn")` without importing
them; the `unlearn` job kind runs them (`runners/unlearn.py`). See README "Unlearning".
"""
