"""MLflow at the edge: the only package that imports mlflow.

``store`` (the tracking URI's one client, experiments), ``writer`` (:class:`RunTracker`, one run's
writes), ``queries`` (runs as :class:`~salt_exp.contract.RunSummary`, cached artifact downloads),
``registry`` (versions as the contract's records, aliases), ``git``. Names, tags and artifact paths
come from ``salt_exp.contract``; store locations from ``salt_exp.stores``.
"""

from salt_exp.tracking.git import git_commit
from salt_exp.tracking.queries import artifact_paths, fetch_artifact, find_runs, find_runs_in_studies, run_summary
from salt_exp.tracking.registry import (
                                        alias_version,
                                        ensemble_versions,
                                        registry_versions,
                                        set_model_alias,
                                        snapshot_versions,
)
from salt_exp.tracking.store import client, experiment_id
from salt_exp.tracking.writer import RunTracker, temp_dir

__all__ = ["RunTracker", "alias_version", "artifact_paths", "client", "ensemble_versions", "experiment_id",
           "fetch_artifact", "find_runs", "find_runs_in_studies", "git_commit", "registry_versions", "run_summary", "set_model_alias",
           "snapshot_versions", "temp_dir"]
