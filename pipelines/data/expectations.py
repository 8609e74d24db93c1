"""The Great Expectations suite for canonical events, and what each failure means for the data set.

Each expectation is wrapped in a :class:`Check` that says whether its failing rows can be quarantined one by
one (row level) or whether it judges the table as a whole, and how to explain a failure in one line.

A data set is validated one bucket of whole users at a time (:class:`Suite` runs GX on a bucket; each bucket's
task builds its own, ~0.1 s, so buckets can run on different machines), and :class:`Totals` adds the buckets'
results up into one result per check, judged on the sums as GX judges one frame. The row count against the
previous version needs the whole data set's count only: :func:`judge_row_count` settles it on the total, without
a frame of that many rows.
``great_expectations`` is imported inside the functions that use it: it costs ~4 s, too much for CLI start-up.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.core.config import ValidateParams
from pipelines.data.schema import EVENT_TYPES, REQUIRED_EVENT_COLUMNS

# Column added to the validated frame: how many events the row's user has (for the training-size check).
USER_EVENTS = "user_events"
IN_CATALOGUE = "item_in_catalogue"
DUPLICATE_KEY: tuple[str, ...] = ("user_id", "item_id", "event_type", "ts")
OPTIONAL_STRING_COLUMNS: tuple[str, ...] = ("category_id", "session_id")
_EXAMPLES = 5
_RESULT_FORMAT = {"result_format": "COMPLETE"}  # every unexpected row's position: quarantine needs them
_KEEP = 100  # unexpected values and row positions kept per check across buckets, for the summary's examples
_COUNTS = ("element_count", "missing_count", "unexpected_count")
_LISTS = ("unexpected_list", "unexpected_index_list", "partial_unexpected_list", "partial_unexpected_index_list",
          "partial_unexpected_counts", "unexpected_index_query")


@dataclass(frozen=True)
class Window:
    """The documented period of the events, ``[start, end)``; either bound may be unknown."""

    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None

    def __str__(self) -> str:
        return f"{_iso(self.start)}..{_iso(self.end)}"


@dataclass(frozen=True)
class Check:
    """One GX expectation plus how the pipeline acts on its failure."""

    expectation: Any  # a great_expectations Expectation; typed loosely so this module imports without GX
    row_level: bool  # failing rows can be quarantined; otherwise a failure rejects the whole table
    problem: str  # one-line explanation; may use {count}, {percent}, {observed}, {examples}
    keep_first: bool = False  # flagged rows are copies of one event: quarantine all but the first

    @property
    def name(self) -> str:
        return str(self.expectation.expectation_type)

    @property
    def columns(self) -> list[str]:
        column = getattr(self.expectation, "column", None)
        return [column] if column else list(getattr(self.expectation, "column_list", None) or [])

    @property
    def mostly(self) -> float:
        """The share of rows that must pass (1.0 for checks without one)."""
        return float(getattr(self.expectation, "mostly", None) or 1.0)

    @property
    def label(self) -> str:
        return f"{self.name}({','.join(self.columns)})" if self.columns else self.name


@dataclass(frozen=True)
class CheckResult:
    """A check's GX validation result, with the fields the pipeline reads."""

    check: Check
    success: bool
    result: dict[str, Any]
    error: str | None = None

    @property
    def unexpected_rows(self) -> list[int]:
        return [int(i) for i in self.result.get("unexpected_index_list") or []]

    def examples(self, n: int) -> list[Any]:
        """The first ``n`` distinct unexpected values (a value repeated on many rows is shown once)."""
        distinct: dict[str, Any] = {}
        for value in self.result.get("unexpected_list") or []:
            distinct.setdefault(repr(value), value)
            if len(distinct) == n:
                break
        return list(distinct.values())

    def message(self) -> str:
        """Why this check failed, in one line, e.g. ``expect_...(ts): 4 rows outside A..B``."""
        if self.error:
            return f"{self.check.label}: error: {self.error.splitlines()[0]}"
        examples = ", ".join(repr(v) for v in self.examples(3))
        problem = self.check.problem.format(
            count=self.result.get("unexpected_count") or 0,
            percent=self.result.get("unexpected_percent") or 0.0,
            observed=self.result.get("observed_value"),
            examples=examples,
        )
        return f"{self.check.label}: {problem}"

    def to_summary(self) -> dict[str, Any]:
        """The per-expectation entry of ``summary.json`` (JSON-safe values only)."""
        return {
            "name": self.check.name,
            "columns": self.check.columns,
            "level": "row" if self.check.row_level else "table",
            "success": self.success,
            "unexpected_count": self.result.get("unexpected_count"),
            "unexpected_percent": self.result.get("unexpected_percent"),
            "examples": [_jsonable(v) for v in self.examples(_EXAMPLES)],
            "example_rows": self.unexpected_rows[:_EXAMPLES],
            "observed_value": _jsonable(self.result.get("observed_value")),
            "error": self.error,
            "message": None if self.success else self.message(),
        }


def build_checks(
    columns: Collection[str], window: Window, has_catalogue: bool, params: ValidateParams
) -> list[Check]:
    """The per-bucket suite for frames with ``columns``; checks on absent columns are left out (existence fails
    first). The row count against the previous version is :func:`row_count_check`, judged on the total."""
    _quiet_gx()
    import great_expectations.expectations as gxe

    checks = _schema_checks(gxe, columns)
    checks += _row_checks(gxe, columns, window, has_catalogue, params)
    checks += _volume_checks(gxe, columns, params)
    return checks


def _schema_checks(gxe: Any, columns: Collection[str]) -> list[Check]:
    checks = [Check(gxe.ExpectColumnToExist(column=c), False, "column missing") for c in REQUIRED_EVENT_COLUMNS]
    for column in [*REQUIRED_EVENT_COLUMNS, *OPTIONAL_STRING_COLUMNS]:
        if column in columns:
            # "Timestamp" matches only tz-aware datetimes, which the window comparison needs.
            type_ = "Timestamp" if column == "ts" else "str"
            expectation = gxe.ExpectColumnValuesToBeOfType(column=column, type_=type_)
            checks.append(Check(expectation, False, f"type {{observed}}, expected {type_}"))
    return checks


def _row_checks(
    gxe: Any, columns: Collection[str], window: Window, has_catalogue: bool, params: ValidateParams
) -> list[Check]:
    present = [c for c in REQUIRED_EVENT_COLUMNS if c in columns]
    checks = [Check(gxe.ExpectColumnValuesToNotBeNull(column=c), True, "{count} null values") for c in present]
    if "event_type" in columns:
        expectation = gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES))
        checks.append(Check(expectation, True, "{count} rows with unknown event types, e.g. {examples}"))
    if "ts" in columns and (window.start is not None or window.end is not None):
        expectation = gxe.ExpectColumnValuesToBeBetween(
            column="ts", min_value=_py(window.start), max_value=_py(window.end), strict_max=True
        )
        checks.append(Check(expectation, True, f"{{count}} rows outside {window}"))
    if set(DUPLICATE_KEY) <= set(columns):
        allowed = params.max_duplicate_fraction
        expectation = gxe.ExpectCompoundColumnsToBeUnique(column_list=list(DUPLICATE_KEY), mostly=1 - allowed)
        problem = f"{{count}} rows in duplicated events ({{percent:.2f}}%, at most {allowed:.2%} allowed)"
        checks.append(Check(expectation, True, problem, keep_first=True))
    if has_catalogue and "item_id" in columns:
        # A derived flag, not a value set of every item id: the full Taobao catalogue has 4 million items,
        # which would bloat the suite and the Data Docs.
        expectation = gxe.ExpectColumnValuesToBeInSet(column=IN_CATALOGUE, value_set=[True])
        checks.append(Check(expectation, True, "{count} rows with items not in the catalogue"))
    return checks


def _volume_checks(gxe: Any, columns: Collection[str], params: ValidateParams) -> list[Check]:
    """Enough history per user to train on (per-user counts are bucket-local: a bucket holds whole users)."""
    if "user_id" not in columns:
        return []
    k, share = params.min_events_per_user, params.min_trainable_fraction
    expectation = gxe.ExpectColumnValuesToBeBetween(column=USER_EVENTS, min_value=k, mostly=share)
    problem = f"{{percent:.1f}}% of rows from users with fewer than {k} events (at most {1 - share:.0%})"
    return [Check(expectation, False, problem)]


def row_count_check(prev_rows: int, params: ValidateParams) -> Check:
    """No sudden shrinkage between versions: at most ``max_row_drop`` fewer rows than the previous version."""
    _quiet_gx()
    import great_expectations.expectations as gxe

    minimum = math.ceil(prev_rows * (1 - params.max_row_drop))
    drop = params.max_row_drop
    problem = f"{{observed}} rows, fewer than {minimum} (previous version {prev_rows}, max drop {drop:.0%})"
    return Check(gxe.ExpectTableRowCountToBeBetween(min_value=minimum), False, problem)


def judge_row_count(check: Check, rows: int) -> CheckResult:
    """The row-count expectation settled on the data set's total (GX would need a frame of ``rows`` rows: it
    hashes every batch, 13 s and 2.6 GB for an empty 100M-row frame)."""
    low, high = check.expectation.min_value, check.expectation.max_value
    success = (low is None or rows >= low) and (high is None or rows <= high)
    return CheckResult(check, success, {"observed_value": rows})


class Suite:
    """The checks as one GX suite in one ephemeral context, which can be run on frame after frame.

    Data Docs are rendered (through a Checkpoint's UpdateDataDocsAction into ``docs_dir``) for the runs asked
    to; every run's result is dropped from GX's in-memory store afterwards, so memory does not grow with buckets.
    """

    def __init__(self, checks: list[Check], docs_dir: Path) -> None:
        _quiet_gx()
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        for site in list(context.list_data_docs_sites()):  # the default site renders into a throwaway temp dir
            context.delete_data_docs_site(site)
        store = {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())}
        index = {"class_name": "DefaultSiteIndexBuilder"}
        context.add_data_docs_site(
            "local_site", {"class_name": "SiteBuilder", "store_backend": store, "site_index_builder": index}
        )
        batch = context.data_sources.add_pandas("shoprec").add_dataframe_asset("events")
        suite = context.suites.add(gx.ExpectationSuite(name="canonical_events"))
        self._checks = {suite.add_expectation(check.expectation).id: check for check in checks}
        self._definition = context.validation_definitions.add(
            gx.ValidationDefinition(name="events", data=batch.add_batch_definition_whole_dataframe("all"), suite=suite)
        )
        self._checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name="validate",
                validation_definitions=[self._definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                result_format=_RESULT_FORMAT,
            )
        )
        self._store = context.validation_results_store

    def run(self, frame: pd.DataFrame, docs: bool = False) -> list[CheckResult]:
        """Validate ``frame``, rendering Data Docs if ``docs``; one result per check, in the checks' order."""
        batch = {"dataframe": frame}
        if docs:
            (validation,) = self._checkpoint.run(batch_parameters=batch).run_results.values()
        else:
            validation = self._definition.run(batch_parameters=batch, result_format=_RESULT_FORMAT)
        for key in self._store.list_keys():
            self._store.remove_key(key)
        by_id = {r.expectation_config.id: r for r in validation.results}
        return [_check_result(check, by_id[key]) for key, check in self._checks.items()]


@dataclass
class _Tally:
    """One check's results so far, over the buckets seen."""

    success: bool = True
    error: str | None = None
    counted: bool = True  # every bucket reported element and unexpected counts
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTS, 0))
    values: list[Any] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    fields: dict[str, Any] | None = None  # the rest of the result (observed values) of the first or first failing


class Totals:
    """The buckets' results of each check added up into one result, as GX would report it on all rows at once.

    Counted (map) checks sum their element, missing and unexpected counts and are judged on the sums with the
    check's ``mostly`` by GX's rule (vacuously true without rows to consider); the others (columns, types) pass
    only if every bucket passed, with the observed value of the first bucket that failed. Unexpected values and
    row positions (shifted by the rows of earlier buckets: positions in the validated order) are kept from the
    first buckets, ``_KEEP`` of each.
    """

    def __init__(self, checks: list[Check]) -> None:
        self._checks = checks
        self._tallies = [_Tally() for _ in checks]

    def add(self, results: list[CheckResult], offset: int) -> None:
        """Fold in one bucket's results (in the checks' order); ``offset`` is the rows of the buckets before."""
        for tally, result in zip(self._tallies, results, strict=True):
            got = result.result
            if tally.fields is None or (tally.success and not result.success):
                tally.fields = {k: v for k, v in got.items() if k not in _COUNTS and k not in _LISTS}
            tally.success = tally.success and result.success
            tally.error = tally.error or result.error
            # not-null checks report no missing count: none of their rows is left out
            tally.counted = tally.counted and None not in (got.get("element_count"), got.get("unexpected_count"))
            if tally.counted:
                tally.counts = {k: tally.counts[k] + int(got.get(k) or 0) for k in _COUNTS}
            tally.values += list(got.get("unexpected_list") or [])[: _KEEP - len(tally.values)]
            tally.rows += [offset + i for i in result.unexpected_rows[: _KEEP - len(tally.rows)]]

    @staticmethod
    def kept(result: CheckResult) -> dict[str, Any]:
        """What :meth:`add` reads of a bucket's result (no long lists but the first ``_KEEP`` unexpected values
        and rows): a bucket validated on a worker sends back this much, however many rows it flagged."""
        got = result.result
        return {k: v for k, v in got.items() if k not in _LISTS} | {
            "unexpected_list": list(got.get("unexpected_list") or [])[:_KEEP],
            "unexpected_index_list": list(got.get("unexpected_index_list") or [])[:_KEEP],
        }

    def results(self) -> list[CheckResult]:
        return [self._total(check, tally) for check, tally in zip(self._checks, self._tallies, strict=True)]

    @staticmethod
    def _total(check: Check, tally: _Tally) -> CheckResult:
        result = {**(tally.fields or {}), "unexpected_list": tally.values, "unexpected_index_list": tally.rows}
        if tally.error or not tally.counted:
            return CheckResult(check, tally.success and not tally.error, result, tally.error)
        rows, missing, unexpected = (tally.counts[k] for k in _COUNTS)
        considered = rows - missing
        result |= tally.counts | {
            "unexpected_percent": 100 * unexpected / considered if considered else None,
            "unexpected_percent_nonmissing": 100 * unexpected / considered if considered else None,
            "unexpected_percent_total": 100 * unexpected / rows if rows else None,
            "missing_percent": 100 * missing / rows if rows else None,
        }
        success = not considered or (considered - unexpected) / considered >= check.mostly
        return CheckResult(check, success, result)


def _check_result(check: Check, result: Any) -> CheckResult:
    return CheckResult(check, bool(result.success), dict(result.result or {}), _error(result.exception_info or {}))


def _error(info: dict[str, Any]) -> str | None:
    """The exception message GX caught, if any; metric errors are nested under their metric id."""
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    nested = [v for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
    return str(nested[0].get("exception_message")) if nested else None


def _quiet_gx() -> None:
    """No analytics calls (there is no network) and no INFO chatter; progress bars are off per context."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations  # noqa: F401  (GX sets its own logger levels on import; override them after)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("great_expectations"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _py(ts: pd.Timestamp | None) -> Any:
    return None if ts is None else ts.to_pydatetime()


def _iso(ts: pd.Timestamp | None) -> str:
    return "" if ts is None else ts.isoformat()


def _jsonable(value: Any) -> Any:
    """Unexpected values as JSON: timestamps as ISO strings, missing values as null, rows as dicts."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)
