"""Optuna studies of fold runs: the only package that imports optuna.

``spec`` (study files), ``storage`` (storage/sampler/pruner), ``trial`` (one trial = one MLflow
parent run with nested fold runs), ``recover`` (resume without duplicates, shared budget),
``driver`` (workers, local MLflow server), ``report``, ``cli``. Importing the package imports
nothing heavy: the CLI imports the modules it needs.
"""
