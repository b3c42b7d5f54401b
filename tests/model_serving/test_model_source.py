"""A scorer is checked at load: one that would give wrong verdicts is never served."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from model_serving.model_source import scorer_problem
from pipeline_contracts.scorer import AnomalyScorer


def _with_array(scorer: AnomalyScorer, where: str, value: float) -> AnomalyScorer:
    """``scorer`` with the first element of one of its arrays set to ``value``."""
    if where in ("mean", "scale"):
        array = getattr(scorer, where).copy()
        array[0] = value
        return dataclasses.replace(scorer, **{where: array})
    kind, index = where.split("_")
    arrays = list(getattr(scorer.network, kind + "es" if kind == "bias" else kind + "s"))
    arrays[int(index)] = arrays[int(index)].copy()
    arrays[int(index)].flat[0] = value
    field = "biases" if kind == "bias" else "weights"
    return dataclasses.replace(
        scorer, network=dataclasses.replace(scorer.network, **{field: tuple(arrays)})
    )


def test_a_sound_scorer_has_no_problem(scorer) -> None:
    assert scorer_problem(scorer) is None


@pytest.mark.parametrize("where", ["mean", "scale", "weight_0", "bias_1", "weight_3"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_array_is_named(scorer, where, value) -> None:
    problem = scorer_problem(_with_array(scorer, where, value))
    assert problem == f"{where} holds a value that is not a finite number"


def test_a_zero_scale_is_refused(scorer) -> None:
    assert scorer_problem(_with_array(scorer, "scale", 0.0)) == (
        "scale holds a value that is not positive"
    )


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), 0.0, -1.0])
def test_a_threshold_that_is_not_finite_and_positive_is_refused(scorer, threshold) -> None:
    problem = scorer_problem(dataclasses.replace(scorer, threshold=threshold))
    assert problem == f"threshold {threshold!r} is not a finite positive number"


def test_an_array_of_the_wrong_shape_is_named(scorer) -> None:
    narrow = dataclasses.replace(scorer, mean=scorer.mean[:-1])
    assert scorer_problem(narrow).startswith("mean has shape (12,), expected (13,)")
    weights = list(scorer.network.weights)
    weights[1] = weights[1][:, :-1]  # one unit fewer: the next layer no longer fits
    broken = dataclasses.replace(
        scorer, network=dataclasses.replace(scorer.network, weights=tuple(weights))
    )
    assert scorer_problem(broken).startswith("bias_1 has shape")


def test_an_unknown_feature_spec_is_refused(scorer) -> None:
    other = dataclasses.replace(scorer, feature_spec_version="0-unknown")
    assert "feature spec '0-unknown' is not the spec this code computes" in scorer_problem(other)
