"""Models-from-code file of a registered cycle snapshot: MLflow stores it beside the MLmodel file and runs it
on ``mlflow.pyfunc.load_model`` (the package comes from the model's ``code/`` folder or the environment)."""

from mlflow.models import set_model

from salt_exp.serving.pyfunc import SnapshotModel

set_model(SnapshotModel())
