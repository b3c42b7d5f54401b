"""What crosses the wire of the scoring routes: the request models, the decoding of a body
into the feature spec's input columns, and the encoding of the verdicts.

The pydantic models (:class:`PullRequestIn`, :class:`FeatureVector`) are the contract: they
are what /openapi.json documents, and they decide what is accepted and how a refusal reads
(a 422 whose ``loc`` names the field). Decoding every body through them took most of a large
batch's time (``make profile-serving``), so a body is first decoded by msgspec into structs
of the same fields with the same bounds, in one pass in C. Whatever that fast path refuses,
or cannot say in its types (the time bounds and the order of ``merged_at``: checked on the
arrays afterwards), is decoded again by the pydantic model, which accepts it or names the
field. So the fast path only ever accepts what the model accepts, with the same values
(``tests/model_serving/test_bodies.py`` tries it), with two exceptions, both far outside
what a client sends: a time with more than six decimals of a second is rounded to the
microsecond (the model truncates it), and unknown fields nested more than 255 deep are
ignored (the model's parser refuses them).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from itertools import chain
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np
from fastapi.exceptions import RequestValidationError
from pydantic import (
    AliasChoices,
    AliasPath,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)

from model_serving.model_source import LoadedModel
from pipeline_common.limits import EARLIEST_TIME, LATEST_TIME, MAX_COUNT
from pipeline_contracts.features import FEATURE_NAMES, MERGED_BEFORE_CREATED, FeatureInputs
from pipeline_contracts.scorer import Scores

# strict: JSON true or "12" is not a count (data-fetch quarantines such records too);
# bounded by the limits every stage shares, so a count the feature spec cannot represent is
# this request's 422, never an error in the micro-batch it would share with others
_Count = Annotated[int, Field(ge=0, le=MAX_COUNT, strict=True)]
# strict: RFC 3339 text only, as the document says (not a number of seconds)
_Time = Annotated[datetime, Field(ge=EARLIEST_TIME, lt=LATEST_TIME, strict=True)]


def _document_github_aliases(schema: dict[str, Any]) -> None:
    """The GitHub fields read by aliases (resolved in pydantic-core, so they are not in the
    generated schema), documented where a client or a generator reads them. Described, not
    typed: they are read only when the flat field is absent, and ignored otherwise."""
    schema["properties"]["base"] = {
        "description": "GitHub's base: base.repo.full_name is read as repository when "
        "repository is absent",
        "examples": [{"repo": {"full_name": "pallets/flask"}}],
    }
    schema["properties"]["user"] = {
        "description": "GitHub's user: user.login is read as author when author is absent",
        "examples": [{"login": "octocat"}],
    }


class PullRequestIn(BaseModel):
    """A GitHub REST-shaped pull request; fields the model does not use are ignored. Counts
    are at most 2**53 and times between 1970-01-01 and 2200-01-01 (UTC when no zone is
    given): the limits every stage shares."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=_document_github_aliases)

    number: int | None = Field(default=None, ge=1, le=MAX_COUNT, strict=True)
    title: str = ""
    body: str | None = ""
    additions: _Count
    deletions: _Count
    changed_files: _Count
    commits: _Count
    created_at: _Time = Field(description="RFC 3339, from 1970-01-01 to before 2200-01-01")
    merged_at: _Time | None = Field(default=None, description="as created_at, and not before it")
    # Where the pull request sits, for the spec's context features: given flat or taken
    # from GitHub's `base.repo.full_name` and `user.login`.
    repository: str | None = Field(
        default=None,
        validation_alias=AliasChoices("repository", AliasPath("base", "repo", "full_name")),
        description="owner/name; or GitHub's base.repo.full_name",
    )
    author: str | None = Field(
        default=None,
        validation_alias=AliasChoices("author", AliasPath("user", "login")),
        description="the author's login; or GitHub's user.login",
    )
    # Callers that know the context may send it; otherwise the model's snapshot fills it.
    author_prior_pull_requests: _Count | None = None
    # below the largest count, exclusive: every number under 2**53 is exact as a float, so
    # an integer past the bound cannot round down into it
    repository_median_changes: float | None = Field(
        default=None, ge=0, lt=MAX_COUNT, allow_inf_nan=False, strict=True
    )

    @field_validator("merged_at")
    @classmethod
    def _merged_after_creation(cls, merged: datetime | None, info: ValidationInfo):
        """The rule preprocessing quarantines by: the model never saw such a record."""
        created = info.data.get("created_at")
        if merged is not None and created is not None and _utc(merged) < _utc(created):
            raise ValueError(f"{MERGED_BEFORE_CREATED} ({created.isoformat()})")
        return merged


_Feature = Annotated[float, Field(strict=True, allow_inf_nan=False)]
_FEATURE_FIELDS: dict[str, Any] = {name: (_Feature, ...) for name in FEATURE_NAMES}
FeatureVector = create_model(
    "FeatureVector",
    __config__=ConfigDict(extra="ignore"),
    __doc__="Ready features, one finite number per name of the model's feature spec.",
    **_FEATURE_FIELDS,
)


def _utc(moment: datetime) -> datetime:
    """A time without a zone is UTC (GitHub writes every time in UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def validate_body(body: bytes, model: Any) -> tuple[list, bool]:
    """``(items, was_a_list)`` of ``body`` (one ``model`` or a list of them) validated by
    the model; otherwise a 422 naming each field (``["body", index, field]``)."""
    is_list = _is_list(body)
    adapter = _ADAPTERS[model][is_list]
    try:
        parsed = adapter.validate_json(body)
    except ValidationError as error:
        raise RequestValidationError(
            [
                {**e, "loc": ("body", *e["loc"])}
                for e in error.errors(include_url=False, include_context=False, include_input=False)
            ]
        ) from None
    return (parsed if is_list else [parsed]), is_list


def _is_list(body: bytes) -> bool:
    return body.lstrip()[:1] == b"["


_ADAPTERS: dict[Any, tuple[TypeAdapter, TypeAdapter]] = {
    model: (TypeAdapter(model), TypeAdapter(list[model]))  # type: ignore[valid-type]
    for model in (PullRequestIn, FeatureVector)
}

# -- the fast path: the same fields and bounds as msgspec types -------------------------------
_FastCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
# with a zone: a time without one goes to the model, which reads it as UTC
_FastTime = Annotated[datetime, msgspec.Meta(tz=True)]
_FastMedian = Annotated[float, msgspec.Meta(ge=0, lt=MAX_COUNT)]
# Seconds since the epoch compare as the times do: datetime.timestamp() rounds the exact
# count of microseconds once, and before 2242 floats are closer together than that.
_EARLIEST, _LATEST = EARLIEST_TIME.timestamp(), LATEST_TIME.timestamp()
_NAN = math.nan


class _Repository(msgspec.Struct, gc=False):
    full_name: str | None = None


class _Base(msgspec.Struct, gc=False):
    repo: _Repository | None = None


class _User(msgspec.Struct, gc=False):
    login: str | None = None


class PullRequestFields(msgspec.Struct, gc=False):
    """:class:`PullRequestIn`'s fields as the fast path decodes them (``UNSET``: absent, so
    that GitHub's ``base.repo.full_name`` and ``user.login`` are read as the model reads
    them: only when the flat field is absent)."""

    additions: _FastCount
    deletions: _FastCount
    changed_files: _FastCount
    commits: _FastCount
    created_at: _FastTime
    number: Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)] | None = None
    title: str = ""
    body: str | None = ""
    merged_at: _FastTime | None = None
    repository: str | msgspec.UnsetType | None = msgspec.UNSET
    author: str | msgspec.UnsetType | None = msgspec.UNSET
    base: _Base | None = None
    user: _User | None = None
    author_prior_pull_requests: _FastCount | None = None
    repository_median_changes: _FastMedian | None = None

    @classmethod
    def of(cls, record: PullRequestIn) -> PullRequestFields:
        """A record the model accepted (where the fast path did not), times made UTC."""
        return cls(
            additions=record.additions,
            deletions=record.deletions,
            changed_files=record.changed_files,
            commits=record.commits,
            created_at=_utc(record.created_at),
            number=record.number,
            title=record.title,
            body=record.body,
            merged_at=None if record.merged_at is None else _utc(record.merged_at),
            repository=record.repository,
            author=record.author,
            author_prior_pull_requests=record.author_prior_pull_requests,
            repository_median_changes=record.repository_median_changes,
        )


_INPUT_COLUMNS = len(fields(FeatureInputs))


@dataclass(frozen=True)
class PullRequests:
    """Records as columns: the feature spec's inputs (one row per record, in
    :class:`FeatureInputs` field order, NaN where absent) and what is read per record."""

    inputs: np.ndarray
    numbers: list[int | None]
    repositories: list[str | None]
    authors: list[str | None]

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, rows: slice) -> PullRequests:
        return PullRequests(
            self.inputs[rows], self.numbers[rows], self.repositories[rows], self.authors[rows]
        )

    def feature_inputs(self) -> FeatureInputs:
        return FeatureInputs(*self.inputs.T)

    @classmethod
    def of(cls, records: list[PullRequestFields]) -> PullRequests:
        # one pass of Python per record (attribute reads, two lengths, two times), the
        # numbers then go to numpy in one call
        rows = [
            (
                r.additions,
                r.deletions,
                r.changed_files,
                r.commits,
                len(r.title),
                len(r.body) if r.body else 0,
                r.created_at.timestamp(),
                _NAN if r.merged_at is None else r.merged_at.timestamp(),
                _NAN if r.author_prior_pull_requests is None else r.author_prior_pull_requests,
                _NAN if r.repository_median_changes is None else r.repository_median_changes,
            )
            for r in records
        ]
        inputs = np.fromiter(chain.from_iterable(rows), np.float64, len(rows) * _INPUT_COLUMNS)
        return cls(
            inputs.reshape(len(rows), _INPUT_COLUMNS),
            [r.number for r in records],
            [
                r.repository
                if r.repository is not msgspec.UNSET
                else r.base.repo.full_name
                if r.base is not None and r.base.repo is not None
                else None
                for r in records
            ],
            [
                r.author
                if r.author is not msgspec.UNSET
                else r.user.login
                if r.user is not None
                else None
                for r in records
            ],
        )

    @classmethod
    def concat(cls, parts: list[PullRequests]) -> PullRequests:
        if len(parts) == 1:
            return parts[0]
        return cls(
            np.concatenate([p.inputs for p in parts]),
            [n for p in parts for n in p.numbers],
            [r for p in parts for r in p.repositories],
            [a for p in parts for a in p.authors],
        )

    def within_limits(self) -> bool:
        """Whether every time is within the shared bounds and no record was merged before
        it was created (the model's rules that msgspec's types cannot say)."""
        created, merged = self.inputs[:, 6], self.inputs[:, 7]
        # NaN (not merged) compares false, and fmax skips it
        late = np.fmax(merged, created) >= _LATEST
        return not np.count_nonzero((created < _EARLIEST) | late | (merged < created))


# a float: JSON has no NaN or Infinity, and msgspec refuses a number past float's range
_FeatureVectorFields = msgspec.defstruct(
    "FeatureVectorFields", [(name, float) for name in FEATURE_NAMES], gc=False
)
_DECODERS: dict[Any, tuple[msgspec.json.Decoder, msgspec.json.Decoder]] = {
    fast: (msgspec.json.Decoder(fast), msgspec.json.Decoder(list[fast]))  # type: ignore[valid-type]
    for fast in (PullRequestFields, _FeatureVectorFields)
}
_FEATURES_OF = attrgetter(*FEATURE_NAMES)


def _decode(body: bytes, fast: Any, model: Any) -> tuple[list, bool, bool]:
    """``(items, was_a_list, by_the_model)``: decoded by the fast path, or else by the
    model (a 422 naming the field)."""
    is_list = _is_list(body)
    try:
        decoded = _DECODERS[fast][is_list].decode(body)
    except msgspec.MsgspecError:
        return *validate_body(body, model), True
    return (decoded if is_list else [decoded]), is_list, False


def decode_pull_requests(body: bytes) -> tuple[PullRequests, bool]:
    """``(records, was_a_list)`` of a body of one pull request or a list of them; a 422
    naming the field of any record the model refuses."""
    decoded, is_list, by_the_model = _decode(body, PullRequestFields, PullRequestIn)
    if by_the_model:
        return PullRequests.of([PullRequestFields.of(record) for record in decoded]), is_list
    records = PullRequests.of(decoded)
    if records.within_limits():
        return records, is_list
    models, is_list = validate_body(body, PullRequestIn)
    return PullRequests.of([PullRequestFields.of(record) for record in models]), is_list


def decode_feature_vectors(body: bytes) -> tuple[np.ndarray, bool]:
    """``(matrix, was_a_list)``: one row per vector, columns in ``FEATURE_NAMES`` order."""
    vectors, is_list, _ = _decode(body, _FeatureVectorFields, FeatureVector)
    values = chain.from_iterable(map(_FEATURES_OF, vectors))
    matrix = np.fromiter(values, np.float64, len(vectors) * len(FEATURE_NAMES))
    return matrix.reshape(len(vectors), len(FEATURE_NAMES)), is_list


# -- the answer -------------------------------------------------------------------------------
class Verdict(BaseModel):
    score: float
    threshold: float
    is_anomaly: bool
    top_features: list[str]
    model_name: str
    model_version: str


class PullRequestVerdict(Verdict):
    number: int | None


class ScoreResponse(BaseModel):
    results: list[PullRequestVerdict]


class FeatureScoreResponse(BaseModel):
    results: list[Verdict]


def _struct_of(model: type[BaseModel]) -> Any:
    """``model``'s fields, in order, as a msgspec struct: what the answer is encoded from
    (the pydantic model is what /openapi.json documents)."""
    fields = [(name, field.annotation) for name, field in model.model_fields.items()]
    return msgspec.defstruct(model.__name__, fields, gc=False)


_VERDICT, _PULL_REQUEST_VERDICT = _struct_of(Verdict), _struct_of(PullRequestVerdict)
_ENCODER = msgspec.json.Encoder()


@functools.lru_cache(maxsize=4)
def _name_array(names: tuple[str, ...]) -> np.ndarray:
    return np.asarray(names, dtype=object)


def encode_verdicts(
    scores: Scores, model: LoadedModel, numbers: list[int | None] | None = None
) -> bytes:
    """The body ``{"results": [verdict, ...]}``, each stamped with the model that gave it;
    with ``number`` when ``numbers`` is given."""
    scorer, model_name, model_version = model.scorer, model.name, model.version
    threshold = scorer.threshold
    names = _name_array(scorer.feature_names)[scores.top_features].tolist()
    values = zip(scores.score.tolist(), scores.is_anomaly.tolist(), names, strict=True)
    if numbers is None:
        results = [
            _VERDICT(score, threshold, flag, top, model_name, model_version)
            for score, flag, top in values
        ]
    else:
        results = [
            _PULL_REQUEST_VERDICT(score, threshold, flag, top, model_name, model_version, number)
            for (score, flag, top), number in zip(values, numbers, strict=True)
        ]
    return _ENCODER.encode({"results": results})
