"""Optuna studies of fold runs: the only package that imports optuna.

``spec`` (study files), ``storage`` (storage/sampler/pruner), ``trial`` (one trial = one MLflow
parent run with nested fold runs), ``recover`` (resume without duplicates, shared budget),
``driver`` (workers, local MLflow server), ``report``. Importing the package imports nothing
heavy: ``salt_exp/cli.py`` imports the modules it needs.
"""
