"""Input validation against a model's registered feature schema.

A model server must not run a model on inputs it was never trained for: unknown or missing
features, NaN/infinity (which propagate silently through most models) and values far outside the
training range (a cheap first screen for out-of-distribution and adversarial probing).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from services.serving_monitor.errors import SchemaError
from shared.events import Name

DEFAULT_MAX_ROWS = 1024
# Problems are sent back to the caller: cap their number and the echo of caller-chosen names so
# that a hostile request cannot make the reply large.
MAX_PROBLEMS = 50
_MAX_NAME_ECHO = 64


def _show(name: str) -> str:
    return repr(name if len(name) <= _MAX_NAME_ECHO else name[:_MAX_NAME_ECHO] + "...")


class FeatureSpec(BaseModel):
    """One input feature: its name, allowed closed range, and whether every row must carry it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name = Field(description="feature name as the model server sends it")
    min: float | None = Field(default=None, description="smallest allowed value (inclusive)")
    max: float | None = Field(default=None, description="largest allowed value (inclusive)")
    required: bool = Field(default=True, description="every row must carry a finite value")

    @model_validator(mode="after")
    def _bounds_make_sense(self) -> FeatureSpec:
        for bound in (self.min, self.max):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"feature {self.name!r}: bounds must be finite")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r}: min {self.min} > max {self.max}")
        return self


class FeatureSchema(BaseModel):
    """The registered input schema of one model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Name = Field(description="model name")
    features: list[FeatureSpec] = Field(min_length=1, description="every feature the model takes")
    max_rows: int = Field(default=DEFAULT_MAX_ROWS, ge=1, description="most rows in one request")

    _by_name: dict[str, FeatureSpec] = PrivateAttr(default_factory=dict)
    # name -> (low, high, required) as plain floats: the hot path reads no pydantic attributes.
    _bounds: dict[str, tuple[float, float, bool]] = PrivateAttr(default_factory=dict)
    _required: frozenset[str] = PrivateAttr(default=frozenset())

    @model_validator(mode="after")
    def _names_unique(self) -> FeatureSchema:
        names = [spec.name for spec in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"model {self.model!r}: duplicate feature names")
        return self

    def model_post_init(self, context: Any, /) -> None:
        """Index the features by name once."""
        self._by_name = {spec.name: spec for spec in self.features}
        self._bounds = {
            spec.name: (
                -math.inf if spec.min is None else spec.min,
                math.inf if spec.max is None else spec.max,
                spec.required,
            )
            for spec in self.features
        }
        self._required = frozenset(spec.name for spec in self.features if spec.required)

    def validate_rows(self, rows: Sequence[Mapping[str, float | None]]) -> list[str]:
        """Every problem with `rows`, each naming the row (0-based) and feature; [] when clean."""
        if not rows:
            return ["no rows"]
        if len(rows) > self.max_rows:
            # Refuse before looking inside: the work per request stays bounded.
            return [f"too many rows: {len(rows)} > {self.max_rows}"]
        problems: list[str] = []
        extra = 0
        for index, row in enumerate(rows):
            for problem in self._row_problems(index, row):
                if len(problems) < MAX_PROBLEMS:
                    problems.append(problem)
                else:
                    extra += 1
        if extra:
            problems.append(f"... and {extra} more problems")
        return problems

    def _row_problems(self, index: int, row: Mapping[str, float | None]) -> Iterable[str]:
        bounds = self._bounds
        for name, value in row.items():
            bound = bounds.get(name)
            if bound is None:
                yield f"row {index}: unknown feature {_show(name)}"
                continue
            low, high, required = bound
            if value is None:
                # JSON's way to say "absent": fine for an optional feature, not for a required one.
                if required:
                    yield f"row {index}: feature {_show(name)}: value None is not finite"
                continue
            # bool is an int subclass; a model server sending true/false has a bug or an agenda.
            if isinstance(value, bool) or not isinstance(value, int | float):
                yield f"row {index}: feature {_show(name)}: value is not a number"
                continue
            number = float(value)
            if low <= number <= high and math.isfinite(number):
                continue
            if not math.isfinite(number):
                yield f"row {index}: feature {_show(name)}: value {number} is not finite"
            else:
                spec = self._by_name[name]
                yield (f"row {index}: feature {_show(name)}: value {number} outside [{spec.min}, {spec.max}]")
        if not self._required.issubset(row.keys()):
            for spec in self.features:
                if spec.required and spec.name not in row:
                    yield f"row {index}: missing required feature {_show(spec.name)}"


def schema_from_training(
    model: str,
    x: npt.ArrayLike,
    feature_names: Sequence[str],
    *,
    margin: float = 0.1,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> FeatureSchema:
    """Build a schema from a training matrix: per-column [min, max] widened by `margin` x span.

    Fit it offline on a dataset data-guard passed: a poisoned outlier in `x` would widen the range.
    """
    if not (math.isfinite(margin) and margin >= 0):
        raise SchemaError(f"margin must be finite and >= 0, got {margin}", model=model)
    matrix = np.asarray(x, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise SchemaError(f"expected a non-empty 2-D matrix, got shape {matrix.shape}", model=model)
    if matrix.shape[1] != len(feature_names):
        raise SchemaError(f"{matrix.shape[1]} columns but {len(feature_names)} feature names", model=model)
    specs: list[FeatureSpec] = []
    for column, name in zip(matrix.T, feature_names, strict=True):
        finite = column[np.isfinite(column)]
        if finite.size == 0:
            raise SchemaError("column has no finite value", model=model, feature=name)
        low, high = float(finite.min()), float(finite.max())
        span = high - low
        # A constant column still gets a little room, relative to its magnitude.
        pad = margin * span if span > 0 else margin * max(abs(high), 1.0)
        try:
            specs.append(FeatureSpec(name=name, min=low - pad, max=high + pad))
        except ValidationError as exc:
            # A name that is not an identifier, or a range so wide the margin overflows to inf.
            raise SchemaError(f"invalid feature: {exc.errors()[0]['msg']}", model=model, feature=str(name)) from exc
    try:
        return FeatureSchema(model=model, features=specs, max_rows=max_rows)
    except ValidationError as exc:
        raise SchemaError(f"invalid schema: {exc.errors()[0]['msg']}", model=model) from exc


class SchemaRegistry:
    """Registered feature schemas by model name."""

    def __init__(self, schemas: Iterable[FeatureSchema] = ()) -> None:
        self._schemas: dict[str, FeatureSchema] = {}
        for schema in schemas:
            self.register(schema)

    def register(self, schema: FeatureSchema) -> None:
        """Add or replace the schema of `schema.model`."""
        self._schemas[schema.model] = schema

    def get(self, model: str) -> FeatureSchema | None:
        """The schema of `model`, or None when none is registered."""
        return self._schemas.get(model)

    def __contains__(self, model: object) -> bool:
        return model in self._schemas

    def __len__(self) -> int:
        return len(self._schemas)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every schema by model name, JSON-ready."""
        return {model: schema.model_dump(mode="json") for model, schema in self._schemas.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> SchemaRegistry:
        """Rebuild a registry from `to_dict` output, validating every schema."""
        registry = cls()
        for model, fields in data.items():
            try:
                schema = FeatureSchema.model_validate(dict(fields))
            except ValidationError as exc:
                raise SchemaError(f"invalid schema: {exc.errors()[0]['msg']}", model=str(model)) from exc
            if schema.model != model:
                raise SchemaError("schema stored under another model name", model=str(model))
            registry.register(schema)
        return registry
