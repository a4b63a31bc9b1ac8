"""Names the job specs accept, kept apart from the heavy modules that implement them.

The spec validates against these without importing torch; each registry imports
its implementation lazily by the module named here.
"""

# continual method name -> module under palimpsest.continual
CONTINUAL_METHODS: dict[str, str] = {
    "naive": "naive",
    "joint": "joint",
    "replay": "replay",
    "gere": "gere",
    "ewc": "ewc",
    "l2": "l2",
    "lwf": "lwf",
    "lora": "lora",
    "kappatune": "kappatune",
    "fpf": "fpf",
}
