"""Where each family of training methods lives. Reading it imports no torch.

A method declares itself in its own file (`METHOD = MethodInfo(...)`); the spec and the
runners find the declarations here, statically (`palimpsest.train.methods.discover`).
"""

from palimpsest.train.methods import MethodInfo, discover

FAMILY_PACKAGES = {"continual": "palimpsest.continual", "unlearning": "palimpsest.unlearn"}


def methods_of(family: str) -> dict[str, MethodInfo]:
    """Every declared method of `family`, by name."""
    return discover(FAMILY_PACKAGES[family])


def parameter_table(family: str) -> str:
    """Every method's parameters as a markdown table (README's reference; a test keeps them equal)."""
    def shown(value) -> str:
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    lines = ["| method | parameter | default | allowed | meaning |", "|---|---|---|---|---|"]
    for name, info in sorted(methods_of(family).items()):
        if not info.params:
            lines.append(f"| `{name}` | — | | | |")
        for param in info.params:
            lines.append(f"| `{name}` | `{param.name}` | {shown(param.default)} | {param.describe()} | {param.doc} |")
    return "\n".join(lines)
