"""The MLflow pyfunc: raw GitHub-shaped pull requests (or ready features) in, verdicts out."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from ml_pipeline.features import FEATURE_NAMES
from ml_pipeline.scoring import AnomalyScorer

SCORER_ARTIFACT = "scorer"


class PullRequestAnomalyModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.scorer = AnomalyScorer.load(Path(context.artifacts[SCORER_ARTIFACT]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if set(FEATURE_NAMES) <= set(model_input.columns):
            results = self.scorer.score_features(model_input[list(FEATURE_NAMES)].to_numpy())
        else:
            results = self.scorer.score_records(model_input)
        return pd.DataFrame(results)
