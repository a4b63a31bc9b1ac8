"""`naive`: plain sequential fine-tuning, task after task — the lower bound every method must beat."""

from palimpsest.continual import register
from palimpsest.continual.base import ContinualMethod


@register("naive")
class Naive(ContinualMethod):
    """Fine-tune on each task in turn with nothing to protect earlier tasks."""
