"""The MLflow pyfunc: raw GitHub-shaped pull requests (or ready features) in, verdicts out.

The model is logged one way, :func:`log_scorer_model`: this pyfunc with the scorer file as
its artifact. Model serving reads that file directly
(:func:`pipeline_contracts.scorer.find_scorer`).
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel

from ml_pipeline.feature_frames import score_frame
from pipeline_contracts.features import FEATURE_NAMES
from pipeline_contracts.scorer import SCORER_FILE, AnomalyScorer

SCORER_ARTIFACT = "scorer"
# What scoring imports: numpy arrays, no torch.
INFERENCE_PACKAGES = ("numpy", "pandas", "mlflow-skinny")


class PullRequestAnomalyModel(PythonModel):
    def load_context(self, context) -> None:
        self.scorer = AnomalyScorer.load(Path(context.artifacts[SCORER_ARTIFACT]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if set(FEATURE_NAMES) <= set(model_input.columns):
            results = self.scorer.score_features(model_input[list(FEATURE_NAMES)].to_numpy())
        else:
            results = score_frame(self.scorer, model_input)
        return pd.DataFrame(results)


def log_scorer_model(
    scorer: AnomalyScorer, workdir: Path, registered_model_name: str | None = None
) -> ModelInfo:
    """Log ``scorer`` as the pyfunc ``model`` of the active run (and register it when a
    name is given)."""
    scorer_path = workdir / SCORER_FILE
    scorer.save(scorer_path)
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=PullRequestAnomalyModel(),
        artifacts={SCORER_ARTIFACT: str(scorer_path)},
        code_paths=[str(Path(__file__).resolve().parents[1])],
        pip_requirements=[f"{name}=={version(name)}" for name in INFERENCE_PACKAGES],
        registered_model_name=registered_model_name,
    )
