"""`naive`: plain sequential fine-tuning, task after task — the lower bound every method must beat."""

from palimpsest.train.hooks import TrainingMethod
from palimpsest.train.methods import MethodInfo

METHOD = MethodInfo(
    name="naive", family="continual", implementation="Naive",
    summary="fine-tune on each task in turn (lower bound)", paper="—",
    private=True,
)


class Naive(TrainingMethod):
    """Fine-tune on each task in turn with nothing to protect earlier tasks."""
