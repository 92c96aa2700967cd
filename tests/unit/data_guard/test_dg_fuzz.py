"""Fuzzing the dataset loaders (and analyze on what they return): zero crashes (issue 12).

A bounded run (about 20 s on a loaded two-core machine): a fixed number of examples per harness,
derandomised so every run tries the same inputs, no deadline (the machine is shared), no example
database. The longer run, with fresh seeds, is `benchmarks/fuzz_data_guard.py`.
"""

from __future__ import annotations

from dg_fuzz import Case, csv_cases, hostile_tables, judge, load, mutated_cases, npz_cases, parquet_cases, raw_cases
from hypothesis import HealthCheck, given, settings

from services.data_guard.loader import Table


def _bounded(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


@_bounded(1000)
@given(raw_cases())
def test_arbitrary_bytes_are_a_table_or_a_dataset_error(case: Case) -> None:
    load(case)


@_bounded(1000)
@given(mutated_cases())
def test_mutated_files_are_a_table_or_a_dataset_error(case: Case) -> None:
    load(case)


@_bounded(400)
@given(csv_cases())
def test_hostile_csv_is_a_table_or_a_dataset_error(case: Case) -> None:
    load(case)


@_bounded(300)
@given(parquet_cases())
def test_hostile_parquet_is_a_table_or_a_dataset_error(case: Case) -> None:
    load(case)


@_bounded(800)
@given(npz_cases())
def test_hostile_npz_is_a_table_or_a_dataset_error(case: Case) -> None:
    load(case)


@_bounded(60)
@given(hostile_tables())
def test_analyze_gives_every_hostile_table_a_verdict(table: Table) -> None:
    judge(table)
