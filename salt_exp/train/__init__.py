"""Training utilities: the LR range test (``lr_find``), the cosine-cycle schedule (``schedule``).

Import from the submodules, e.g. ``from salt_exp.train.schedule import CosineCycles``; this package
imports nothing itself, so ``import salt_exp.train`` stays cheap.
"""
