"""Continual-learning methods: one file each, declaring itself with `METHOD = MethodInfo(...)`.

Found by `palimpsest.train.methods.discover("palimpsest.continual")` without importing
them; a job imports only the methods it runs. See README "Adding a method".
"""
