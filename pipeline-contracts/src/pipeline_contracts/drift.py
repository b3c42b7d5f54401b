"""Feature drift: the recent distribution of each feature, saved with the model, and the
population stability index (PSI) of what serving sees against it.

Each feature's reference is cut into (up to) ten bins of equal share: the deciles are the
bin edges, repeated edges merged (a flag has two bins, a feature that is mostly 0 a first
bin that holds all the zeros). Serving keeps the bins of the last records it scored (a
sliding window) and compares their shares ``o`` with the reference shares ``e``:
``PSI = sum((o - e) * ln(o / e))``. By the usual reading, under 0.1 is no shift, 0.1-0.25 a
moderate one, over 0.25 (:data:`DRIFT_ALERT_PSI`, the alert rule's level) a shift worth a
look: traffic unlike the traffic the model was deployed into.

Two choices keep ordinary traffic below the level (issue 24):

- The reference is *recent*: the newest :data:`REFERENCE_RECORDS` pull requests of each
  repository known when the model is built, not the whole (years-long) training split, so a
  window of today's traffic is compared with the traffic just before, like for like.
- The reference is *per repository*: each repository's shares on the common bins, mixed in
  the proportions of the records being compared. Repositories differ structurally (a
  squash-merging one has created_at = merged_at, so 0 hours to merge, always), and a change
  in which repositories send traffic is not a change in the traffic itself. A repository
  the reference does not know is compared with all of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BINS = 10
DRIFT_ALERT_PSI = 0.25
# the newest pull requests of each repository that make its reference (serving's window
# holds as many records)
REFERENCE_RECORDS = 1000
# A bin that one side never fills would make the logarithm infinite.
_SMALLEST_SHARE = 1e-4


@dataclass(frozen=True)
class FeatureReference:
    edges: np.ndarray  # interior bin edges, increasing
    shares: np.ndarray  # share of the reference rows per bin (len(edges) + 1)
    # each repository's share per bin (the same edges); empty in scorers from before
    repositories: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(
        cls, values: np.ndarray, repositories: Sequence[object] | np.ndarray | None = None
    ) -> FeatureReference:
        """The deciles of ``values`` as bins, their shares, and (given each value's
        repository) every repository's shares in the same bins."""
        values = np.asarray(values, dtype=np.float64)
        # deciles taken from the data (no interpolation between a flag's 0 and 1); an edge at
        # the minimum would leave the first bin empty
        deciles = np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1], method="inverted_cdf")
        edges = np.unique(deciles[deciles > values.min()])
        counts = bin_counts(edges, values)
        per_repository = {}
        if repositories is not None:
            names = np.asarray(repositories, dtype=object)
            for repository in sorted(set(names.tolist()), key=str):
                own = bin_counts(edges, values[names == repository])
                per_repository[str(repository)] = own / own.sum()
        return cls(edges, counts / counts.sum(), per_repository)

    def expected_shares(self, records_per_repository: Mapping[str, int]) -> np.ndarray:
        """The shares a window with this many records of each repository should have: each
        known repository's shares, the rest the reference's overall shares, by weight."""
        total = sum(records_per_repository.values())
        if not total or not self.repositories:
            return self.shares
        mixed = np.zeros_like(self.shares)
        for repository, records in records_per_repository.items():
            mixed += records / total * self.repositories.get(repository, self.shares)
        return mixed

    def psi(self, values: np.ndarray, repositories: Sequence[object] | np.ndarray) -> float:
        """The PSI of ``values`` (each from the repository at the same place) against this
        reference, mixed as they are."""
        names, counts = np.unique(np.asarray(repositories, dtype=str), return_counts=True)
        expected = self.expected_shares(dict(zip(names.tolist(), counts.tolist(), strict=True)))
        return population_stability_index(expected, bin_counts(self.edges, values))

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": self.edges.tolist(),
            "shares": self.shares.tolist(),
            "repositories": {name: shares.tolist() for name, shares in self.repositories.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureReference:
        return cls(
            np.asarray(data["edges"], dtype=np.float64),
            np.asarray(data["shares"]),
            {
                str(name): np.asarray(shares)
                for name, shares in data.get("repositories", {}).items()
            },
        )


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
    features: np.ndarray,
    names: Sequence[str],
    repositories: Sequence[object] | np.ndarray | None = None,
) -> dict[str, FeatureReference]:
    """The reference of every feature column of ``features`` (rows x len(names)), per
    repository when each row's is given."""
    return {name: FeatureReference.of(features[:, i], repositories) for i, name in enumerate(names)}


def population_stability_index(expected: np.ndarray, observed_counts: np.ndarray) -> float:
    observed = observed_counts / max(int(observed_counts.sum()), 1)
    e = np.maximum(np.asarray(expected, dtype=np.float64), _SMALLEST_SHARE)
    o = np.maximum(observed, _SMALLEST_SHARE)
    return float(np.sum((o - e) * np.log(o / e)))


class DriftWindow:
    """The last ``size`` records' features and their PSI per feature against the reference.
    Not thread-safe: one event loop feeds it.

    Serving calls :meth:`observe` for every scored batch, most of them a single record, and
    :meth:`psi` once a scrape: so observing only copies the rows (and each record's
    repository, as a small number) into a ring, and the binning and the mixing of the
    repositories' references are done when the PSI is asked for."""

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
        # repositories the reference knows are numbered from 1; 0 is any other (or none)
        known = sorted({r for ref in self.references for r in ref.repositories})
        self._repository_names = ["", *known]
        self._repository_number: dict[object, int] = {
            name: number for number, name in enumerate(known, start=1)
        }
        self._repositories = np.zeros(size, dtype=np.int32)
        self._next = 0
        self._filled = 0

    def observe(self, features: np.ndarray, repositories: Sequence[object] = ()) -> None:
        """Add scored records (and each one's repository, when known) to the window."""
        rows = np.asarray(features, dtype=np.float64)[-self.size :]
        numbers = np.zeros(len(rows), dtype=np.int32)
        if len(repositories) and self._repository_number:
            get = self._repository_number.get
            numbers = np.fromiter(
                (get(r, 0) for r in repositories[-len(rows) :]),
                np.int32,
                len(rows),
            )
        end = self._next + len(rows)
        if end <= self.size:
            self._rows[self._next : end] = rows
            self._repositories[self._next : end] = numbers
        else:  # wraps around the end of the ring
            split = self.size - self._next
            self._rows[self._next :] = rows[:split]
            self._rows[: end - self.size] = rows[split:]
            self._repositories[self._next :] = numbers[:split]
            self._repositories[: end - self.size] = numbers[split:]
        self._next = end % self.size
        self._filled = min(self.size, self._filled + len(rows))

    @property
    def records(self) -> int:
        return self._filled

    def psi(self) -> dict[str, float]:
        """PSI per feature over the window (empty until it holds any record), each against
        its reference mixed in the window's proportions of repositories."""
        if not self._filled:
            return {}
        window = bin_of(self._edges, self._rows[: self._filled])
        per_number = np.bincount(
            self._repositories[: self._filled], minlength=len(self._repository_names)
        )
        mix = {
            name: int(count)
            for name, count in zip(self._repository_names, per_number, strict=True)
            if count
        }
        return {
            name: population_stability_index(
                ref.expected_shares(mix),
                np.bincount(window[:, i], minlength=len(ref.shares)),
            )
            for i, (name, ref) in enumerate(zip(self.names, self.references, strict=True))
        }
