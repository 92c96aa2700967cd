"""Input validation: hostile and malformed inputs are named and refused, clean inputs pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from services.serving_monitor.errors import SchemaError
from services.serving_monitor.validation import (
    MAX_PROBLEMS,
    FeatureSchema,
    FeatureSpec,
    SchemaRegistry,
    schema_from_training,
)


@pytest.fixture
def schema() -> FeatureSchema:
    return FeatureSchema(
        model="churn",
        features=[
            FeatureSpec(name="age", min=18, max=100),
            FeatureSpec(name="income", min=0, max=1e6),
            FeatureSpec(name="score", min=None, max=None, required=False),
        ],
        max_rows=10,
    )


def test_clean_rows_have_no_problems(schema: FeatureSchema) -> None:
    rows: list[dict[str, float | None]] = [
        {"age": 30, "income": 5e4, "score": 0.3},
        {"age": 18, "income": 0.0},  # bounds are inclusive; optional feature absent
        {"age": 100, "income": 1e6, "score": None},  # None for an optional feature is "absent"
    ]
    assert schema.validate_rows(rows) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (math.nan, "row 1: feature 'age': value nan is not finite"),
        (math.inf, "row 1: feature 'age': value inf is not finite"),
        (-math.inf, "row 1: feature 'age': value -inf is not finite"),
        (None, "row 1: feature 'age': value None is not finite"),
        (17.999, "row 1: feature 'age': value 17.999 outside [18.0, 100.0]"),
        (1e300, "row 1: feature 'age': value 1e+300 outside [18.0, 100.0]"),
    ],
)
def test_bad_value_is_named_by_row_and_feature(schema: FeatureSchema, value: float | None, expected: str) -> None:
    rows: list[dict[str, float | None]] = [{"age": 30, "income": 1.0}, {"age": value, "income": 1.0}]
    assert schema.validate_rows(rows) == [expected]


def test_nan_in_optional_feature_is_still_refused(schema: FeatureSchema) -> None:
    problems = schema.validate_rows([{"age": 30, "income": 1.0, "score": math.nan}])
    assert problems == ["row 0: feature 'score': value nan is not finite"]


def test_unknown_feature_is_refused(schema: FeatureSchema) -> None:
    problems = schema.validate_rows([{"age": 30, "income": 1.0, "__class__": 1.0}])
    assert problems == ["row 0: unknown feature '__class__'"]


def test_missing_required_feature_is_refused(schema: FeatureSchema) -> None:
    assert schema.validate_rows([{"age": 30}]) == ["row 0: missing required feature 'income'"]


def test_booleans_and_strings_are_not_numbers(schema: FeatureSchema) -> None:
    rows = [{"age": True, "income": "5"}]
    problems = schema.validate_rows(rows)  # type: ignore[arg-type]
    assert problems == [
        "row 0: feature 'age': value is not a number",
        "row 0: feature 'income': value is not a number",
    ]


def test_too_many_rows_is_refused_without_looking_inside(schema: FeatureSchema) -> None:
    rows: list[dict[str, float | None]] = [{"age": math.nan}] * 11
    assert schema.validate_rows(rows) == ["too many rows: 11 > 10"]
    assert schema.validate_rows([]) == ["no rows"]


def test_problem_list_and_echoed_names_are_bounded() -> None:
    schema = FeatureSchema(model="m", features=[FeatureSpec(name="x")], max_rows=1000)
    hostile = "A" * 100_000
    rows: list[dict[str, float | None]] = [{hostile: 1.0, "x": math.nan}] * 1000
    problems = schema.validate_rows(rows)
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1] == f"... and {2000 - MAX_PROBLEMS} more problems"
    assert max(len(p) for p in problems) < 200


@pytest.mark.parametrize(
    "features",
    [
        [{"name": "x", "min": 2, "max": 1}],
        [{"name": "x", "min": math.nan}],
        [{"name": "x", "max": math.inf}],
        [{"name": "x"}, {"name": "x"}],
        [],
        [{"name": "bad name"}],
    ],
)
def test_inconsistent_schemas_are_refused(features: list[dict[str, object]]) -> None:
    with pytest.raises(ValidationError):
        FeatureSchema.model_validate({"model": "m", "features": features})


def test_schema_from_training_widens_observed_range_by_margin() -> None:
    x = np.array([[0.0, 5.0], [10.0, 5.0], [np.nan, 5.0]])
    schema = schema_from_training("m", x, ["a", "const"], margin=0.1)
    a, const = schema.features
    assert (a.min, a.max) == pytest.approx((-1.0, 11.0))
    assert (const.min, const.max) == pytest.approx((4.5, 5.5))
    assert schema.validate_rows([{"a": 10.5, "const": 5.0}]) == []
    assert schema.validate_rows([{"a": 12.0, "const": 5.0}]) != []


def test_schema_from_training_refuses_unusable_input() -> None:
    with pytest.raises(SchemaError):
        schema_from_training("m", np.zeros((3, 2)), ["a"])
    with pytest.raises(SchemaError) as caught:
        schema_from_training("m", np.array([[np.nan], [np.inf]]), ["empty"])
    assert caught.value.feature == "empty"
    with pytest.raises(SchemaError):
        schema_from_training("m", np.zeros((3, 1)), ["a"], margin=-1)
    with pytest.raises(SchemaError):
        schema_from_training("m", np.zeros((3, 1)), ["bad name"])
    with pytest.raises(SchemaError):
        schema_from_training("m", np.zeros((3, 2)), ["a", "a"])
    with pytest.raises(SchemaError):  # the margin would overflow the range to infinity
        schema_from_training("m", np.array([[-1.7e308], [1.7e308]]), ["huge"])


def test_registry_round_trip_and_lookup(schema: FeatureSchema) -> None:
    registry = SchemaRegistry([schema])
    assert "churn" in registry
    assert registry.get("fraud") is None
    reloaded = SchemaRegistry.from_dict(registry.to_dict())
    loaded = reloaded.get("churn")
    assert loaded == schema
    assert loaded is not None
    assert loaded.validate_rows([{"age": 5, "income": 1.0}]) != []


def test_registry_refuses_tampered_or_misfiled_schemas(schema: FeatureSchema) -> None:
    data = SchemaRegistry([schema]).to_dict()
    data["churn"]["features"][0]["min"] = 500  # min > max
    with pytest.raises(SchemaError):
        SchemaRegistry.from_dict(data)
    misfiled = {"fraud": SchemaRegistry([schema]).to_dict()["churn"]}
    with pytest.raises(SchemaError):
        SchemaRegistry.from_dict(misfiled)


def test_infinity_is_refused_even_for_a_feature_without_bounds() -> None:
    schema = FeatureSchema(model="m", features=[FeatureSpec(name="free")])
    assert schema.validate_rows([{"free": float("inf")}])
    assert schema.validate_rows([{"free": float("-inf")}])
    assert schema.validate_rows([{"free": float("nan")}])
    assert not schema.validate_rows([{"free": 1e300}])
