"""Fetch the registered model from MLflow, check its scorer and load it for the fast path."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline_contracts.features import FEATURE_NAMES, FEATURE_SPEC_VERSION
from pipeline_contracts.registry import ModelReference, download_scorer
from pipeline_contracts.scorer import AnomalyScorer


@dataclass
class LoadedModel:
    name: str
    version: str
    uri: str  # as configured: an alias or a version
    scorer: AnomalyScorer


class UnservableScorerError(ValueError):
    """A scorer file that loads but would give wrong verdicts: /readyz names the reason."""


def load_model(tracking_uri: str, reference: ModelReference) -> LoadedModel:
    """Resolve ``reference`` to a concrete version, download it, check and load the scorer."""
    version, scorer = download_scorer(tracking_uri, reference)
    problem = scorer_problem(scorer)
    if problem:
        raise UnservableScorerError(
            f"{ModelReference.at_version(reference.name, version)}: {problem}: retrain, or "
            "move the alias to a sound version"
        )
    return LoadedModel(reference.name, version, reference.uri, scorer)


def scorer_problem(scorer: AnomalyScorer) -> str | None:
    """Why ``scorer`` cannot be served, or None. A NaN weight flags every record and a NaN
    threshold none, silently: every array must be finite and of the shape the feature spec
    and the layers before it give, the threshold finite and positive, the spec this code's."""
    if scorer.feature_spec_version != FEATURE_SPEC_VERSION:
        return (
            f"feature spec {scorer.feature_spec_version!r} is not the spec this code computes "
            f"({FEATURE_SPEC_VERSION!r})"
        )
    if tuple(scorer.feature_names) != FEATURE_NAMES:
        return f"features {list(scorer.feature_names)} are not the spec's {list(FEATURE_NAMES)}"
    width = len(FEATURE_NAMES)
    arrays: list[tuple[str, np.ndarray, tuple[int, ...]]] = [
        ("mean", scorer.mean, (width,)),
        ("scale", scorer.scale, (width,)),
    ]
    network = scorer.network
    if not (len(network.weights) == len(network.biases) == len(network.relu) > 0):
        return "the network's weights, biases and activations do not pair up layer by layer"
    inputs = width
    for index, (weight, bias) in enumerate(zip(network.weights, network.biases, strict=True)):
        outputs = weight.shape[1] if np.ndim(weight) == 2 else -1
        arrays += [
            (f"weight_{index}", weight, (inputs, outputs)),
            (f"bias_{index}", bias, (outputs,)),
        ]
        inputs = outputs
    if inputs != width:
        return f"the network gives {inputs} outputs for {width} features"
    for name, array, shape in arrays:
        array = np.asarray(array)
        if array.shape != shape:
            return f"{name} has shape {array.shape}, expected {shape}"
        if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
            return f"{name} holds a value that is not a finite number"
    if not (np.asarray(scorer.scale) > 0).all():
        return "scale holds a value that is not positive"
    threshold = scorer.threshold
    if not isinstance(threshold, int | float) or not np.isfinite(threshold) or threshold <= 0:
        return f"threshold {threshold!r} is not a finite positive number"
    return None
