"""Feature drift: the training distribution of each feature, saved with the model, and the
population stability index (PSI) of what serving sees against it.

Each feature's reference is its training split cut into (up to) ten bins of equal share:
the deciles are the bin edges, repeated edges merged (a flag has two bins, a feature that
is mostly 0 a first bin that holds all the zeros). Serving keeps the
bins of the last records it scored (a sliding window) and compares their shares ``o`` with
the reference shares ``e``: ``PSI = sum((o - e) * ln(o / e))``. By the usual reading, under
0.1 is no shift, 0.1-0.25 a moderate one, over 0.25 (:data:`DRIFT_ALERT_PSI`, the alert
rule's level) a shift worth a look: the model scores records unlike those it learnt from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BINS = 10
DRIFT_ALERT_PSI = 0.25
# A bin that one side never fills would make the logarithm infinite.
_SMALLEST_SHARE = 1e-4


@dataclass(frozen=True)
class FeatureReference:
    edges: np.ndarray  # interior bin edges, increasing
    shares: np.ndarray  # share of the training rows per bin (len(edges) + 1)

    @classmethod
    def of(cls, values: np.ndarray) -> FeatureReference:
        values = np.asarray(values, dtype=np.float64)
        # deciles taken from the data (no interpolation between a flag's 0 and 1); an edge at
        # the minimum would leave the first bin empty
        deciles = np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1], method="inverted_cdf")
        edges = np.unique(deciles[deciles > values.min()])
        counts = bin_counts(edges, values)
        return cls(edges, counts / counts.sum())

    def to_dict(self) -> dict[str, list[float]]:
        return {"edges": self.edges.tolist(), "shares": self.shares.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureReference:
        return cls(np.asarray(data["edges"], dtype=np.float64), np.asarray(data["shares"]))


def bin_of(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The bin of each value: how many edges are at or below it. ``edges`` is one feature's
    (values a vector) or every feature's padded with +inf (values rows x features), so the
    reference and serving's window bin by the same rule."""
    counted: np.ndarray = (values[..., None] >= edges).sum(axis=-1, dtype=np.int16)
    return counted


def bin_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """How many of one feature's ``values`` fall in each of its bins (``len(edges) + 1``)."""
    binned = bin_of(edges, np.asarray(values, dtype=np.float64))
    counts: np.ndarray = np.bincount(binned, minlength=len(edges) + 1)
    return counts


def reference_distribution(
    features: np.ndarray, names: Sequence[str]
) -> dict[str, FeatureReference]:
    """The reference of every feature column of ``features`` (rows x len(names))."""
    return {name: FeatureReference.of(features[:, i]) for i, name in enumerate(names)}


def population_stability_index(expected: np.ndarray, observed_counts: np.ndarray) -> float:
    observed = observed_counts / max(int(observed_counts.sum()), 1)
    e = np.maximum(np.asarray(expected, dtype=np.float64), _SMALLEST_SHARE)
    o = np.maximum(observed, _SMALLEST_SHARE)
    return float(np.sum((o - e) * np.log(o / e)))


class DriftWindow:
    """The last ``size`` records' features and their PSI per feature against the reference.
    Not thread-safe: one event loop feeds it.

    Serving calls :meth:`observe` for every scored batch, most of them a single record, and
    :meth:`psi` once a scrape: so observing only copies the rows into a ring, and the
    binning is done when the PSI is asked for."""

    def __init__(
        self, references: dict[str, FeatureReference], names: Sequence[str], size: int = 1000
    ):
        self.names = tuple(names)
        self.references = [references[name] for name in self.names]
        self.size = size
        # every feature's edges in one matrix (padded with +inf), so that the window is
        # binned in one comparison rather than one search per feature
        widest = max((len(ref.edges) for ref in self.references), default=0)
        self._edges = np.full((len(self.names), widest), np.inf)
        for i, ref in enumerate(self.references):
            self._edges[i, : len(ref.edges)] = ref.edges
        self._rows = np.zeros((size, len(self.names)), dtype=np.float64)
        self._next = 0
        self._filled = 0

    def observe(self, features: np.ndarray) -> None:
        rows = np.asarray(features, dtype=np.float64)[-self.size :]
        end = self._next + len(rows)
        if end <= self.size:
            self._rows[self._next : end] = rows
        else:  # wraps around the end of the ring
            split = self.size - self._next
            self._rows[self._next :] = rows[:split]
            self._rows[: end - self.size] = rows[split:]
        self._next = end % self.size
        self._filled = min(self.size, self._filled + len(rows))

    @property
    def records(self) -> int:
        return self._filled

    def psi(self) -> dict[str, float]:
        """PSI per feature over the window (empty until it holds any record)."""
        if not self._filled:
            return {}
        window = bin_of(self._edges, self._rows[: self._filled])
        return {
            name: population_stability_index(
                ref.shares, np.bincount(window[:, i], minlength=len(ref.shares))
            )
            for i, (name, ref) in enumerate(zip(self.names, self.references, strict=True))
        }
