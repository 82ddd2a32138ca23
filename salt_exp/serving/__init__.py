"""Registered snapshots and ensembles as MLflow models (pyfunc), and applying them to new tiles.

``tiles`` (input coercion and checks, no torch), ``predictor`` (snapshot and ensemble predictors over
local weight files, no MLflow), ``pyfunc`` (the ``mlflow.pyfunc.PythonModel`` wrappers and their
signatures), ``snapshot_model`` / ``ensemble_model`` (the models-from-code files MLflow stores with
each model), ``commands`` (``salt-exp predict`` and ``salt-exp serve``).
"""
