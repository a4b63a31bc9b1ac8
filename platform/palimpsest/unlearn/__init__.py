"""Machine unlearning: the forget-request ledger (methods and the `unlearn` job kind come next)."""
