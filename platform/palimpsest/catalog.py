"""Where each family of training methods lives. Reading it imports no torch.

A method declares itself in its own file (`METHOD = MethodInfo(...)`); the spec and the
runners find the declarations here, statically (`palimpsest.train.methods.discover`).
"""

from palimpsest.train.methods import MethodInfo, discover

FAMILY_PACKAGES = {"continual": "palimpsest.continual"}


def methods_of(family: str) -> dict[str, MethodInfo]:
    """Every declared method of `family`, by name."""
    return discover(FAMILY_PACKAGES[family])
