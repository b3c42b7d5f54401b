"""Model references: parsed once, rendered once, the same URI back."""

from __future__ import annotations

import pytest

from pipeline_contracts.registry import CHAMPION, DEFAULT_MODEL_NAME, ModelReference


@pytest.mark.parametrize("uri", ["models:/pr-anomaly@champion", "models:/pr-anomaly/12"])
def test_a_reference_renders_the_uri_it_was_parsed_from(uri: str) -> None:
    assert ModelReference.parse(uri).uri == uri


def test_alias_and_version_references() -> None:
    champion = ModelReference.at_alias(DEFAULT_MODEL_NAME, CHAMPION)
    assert (champion.alias, champion.version) == ("champion", None)
    assert ModelReference.at_version("m", 3) == ModelReference.parse("models:/m/3")
    with pytest.raises(ValueError, match="resolve it to a version"):
        _ = champion.versioned_uri


@pytest.mark.parametrize(
    "uri", ["models:/m", "models:/m/latest", "runs:/abc/model", "models:/m@a/3", "m@champion"]
)
def test_anything_else_is_refused_naming_the_accepted_forms(uri: str) -> None:
    with pytest.raises(ValueError, match=r"models:/<name>@<alias> or models:/<name>/<version>"):
        ModelReference.parse(uri)


def test_a_reference_names_an_alias_or_a_version_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        ModelReference("m", alias="champion", version="3")
    with pytest.raises(ValueError, match="not both"):
        ModelReference("m")
    with pytest.raises(ValueError, match="not a number"):
        ModelReference("m", version="x")
