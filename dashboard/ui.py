"""What every page shares: the project root, cached reads, wording of metrics and checks, and empty states.

Reads are cached for ``TTL_S`` seconds (a new training shows up on its own within that time; the sidebar's
refresh button clears the caches at once). Every cached function takes the root as its first argument, so two
projects never share an entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import data
from pipelines.core.errors import ShoprecError
from pipelines.data.schema import EVENT_TYPES

if TYPE_CHECKING:
    from pipelines.serving.model import ServingModel

TTL_S = 30
EVENT_COLORS = alt.Scale(domain=list(EVENT_TYPES), range=["#90a4ae", "#ffb74d", "#f06292", "#43a047"])

METRIC_LABELS = {
    "ndcg_at_10": "Ranking quality (NDCG@10)",
    "hr_at_10": "Hit rate @10",
    "recall_at_10": "Recall @10",
    "mrr_at_10": "MRR @10",
    "ndcg_at_20": "Ranking quality (NDCG@20)",
    "hr_at_20": "Hit rate @20",
    "coverage": "Catalogue coverage",
    "novelty": "Novelty",
}
METRIC_HELP = {
    "ndcg_at_10": "How high the item the user really took next appears in the top 10 (1 = always first).",
    "hr_at_10": "Share of test users whose next item is among the 10 recommendations.",
    "coverage": "Share of the catalogue that appears in at least one user's recommendations.",
    "novelty": "How far from the bestsellers the recommendations are (higher = less obvious).",
}
HEADLINE = ("ndcg_at_10", "hr_at_10", "coverage", "novelty")
_PERCENT = {"hr_at_10", "hr_at_20", "recall_at_10", "coverage"}

_CHECKS = {
    "data_validation_passed": "The training data passed validation",
    "ndcg@10": "Ranking quality (NDCG@10) at least the minimum",
    "hr@10": "Hit rate @10 at least the minimum",
    "lift_ndcg@10_vs_popularity": "Gain over the bestseller list at least the minimum",
    "lift_ndcg@10_ci_low_above_zero": "Gain over the bestseller list is real (confidence interval above zero)",
    "cold_start_ndcg@10_regression_vs_popularity": "New users are not served worse than by the bestseller list",
    "scoring_ms_per_user": "Scoring time per user (ms) within budget",
}


def root() -> str:
    """The project the dashboard shows (``SHOPREC_ROOT`` or the working directory)."""
    return str(data.project_root())


def fmt_metric(name: str, value: Any) -> str:
    """Rates as percentages, scores with three decimals, missing values as a dash."""
    if value is None or pd.isna(value):
        return "-"
    return f"{value:.1%}" if name in _PERCENT else f"{value:.3f}"


def fmt_delta(name: str, delta: float) -> str:
    """A change of a rate in percentage points, of a score in its own units."""
    return f"{delta * 100:+.1f} pp" if name in _PERCENT else f"{delta:+.3f}"


def describe_check(name: str, with_version: bool = True) -> str:
    """A gate check's name in words a merchandiser reads; ``with_version=False`` groups the champion comparisons."""
    if name.startswith("ndcg@10_vs_champion_v"):
        version = name.removeprefix("ndcg@10_vs_champion_v").split("_", 1)[0]
        return "Not worse than the champion of the time" + (f" (v{version})" if with_version else "")
    return _CHECKS.get(name, name)


def empty_state(message: str, command: str) -> None:
    """Say what is missing and the command that produces it, instead of failing."""
    st.info(message, icon=":material/info:")
    st.code(command, language="bash")


def page_header(title: str, intro: str) -> None:
    st.title(title)
    st.caption(intro)


@st.cache_data(ttl=TTL_S, show_spinner="Reading the model registry ...")
def runs(root: str) -> pd.DataFrame:
    return data.model_runs(root)


def _run(root: str, version: int) -> pd.Series:
    frame = runs(root)
    return frame[frame["version"] == version].iloc[0]


@st.cache_data(ttl=TTL_S, show_spinner=False)
def gate_history(root: str) -> pd.DataFrame:
    return data.gate_history(root, runs(root))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def segments(root: str) -> pd.DataFrame:
    return data.segment_metrics(root, runs(root))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def components(root: str, version: int) -> pd.DataFrame:
    return data.component_metrics(root, _run(root, version))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def paired_comparison(root: str, version: int) -> dict[str, Any] | None:
    return data.paired_comparison(root, _run(root, version))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def run_params(root: str, version: int) -> dict[str, str]:
    return data.run_params(root, str(_run(root, version)["run_id"]))


def event_stats(root: str) -> data.EventStats | None:
    """Aggregates of the validated events, recomputed only when a new data set is validated (not on a timer)."""
    return _event_stats(root, data.events_stamp(root))


@st.cache_data(max_entries=4, show_spinner="Counting events ...")
def _event_stats(root: str, stamp: int | None) -> data.EventStats | None:
    return data.event_stats(root) if stamp is not None else None


def item_events(root: str, item_id: str) -> pd.DataFrame | None:
    """One item's validated events (cached per item and data version)."""
    return _item_events(root, data.events_stamp(root), item_id)


@st.cache_data(max_entries=64, show_spinner=False)
def _item_events(root: str, stamp: int | None, item_id: str) -> pd.DataFrame | None:
    return data.item_events(root, item_id) if stamp is not None else None


@st.cache_data(ttl=TTL_S, show_spinner=False)
def validation_summary(root: str) -> dict[str, Any] | None:
    return data.validation_summary(root)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def validation_history(root: str) -> pd.DataFrame:
    return data.validation_history(root)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def experiment_readings(root: str) -> pd.DataFrame:
    return data.experiment_readings(root)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def bad_rows(root: str) -> pd.DataFrame:
    summary = data.validation_summary(root)
    return data.bad_rows(root, summary) if summary else pd.DataFrame()


@st.cache_data(ttl=TTL_S, show_spinner=False)
def freshness(root: str) -> data.Freshness | None:
    return data.freshness(root)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def catalogue(root: str) -> pd.DataFrame | None:
    return data.catalogue(root)


def when(ts: Any) -> str:
    """A timestamp as ``2026-11-28 00:37 UTC``, or a dash."""
    return "-" if ts is None or pd.isna(ts) else pd.Timestamp(ts).strftime("%Y-%m-%d %H:%M UTC")


def serving_model(root: str, version: int) -> ServingModel | None:
    """A registered version's serving model, or None (with a warning on the page) when its files cannot be loaded."""
    try:
        return _serving_model(root, version)
    except ShoprecError as exc:
        st.warning(f"Model v{version} cannot be loaded: {exc}", icon=":material/warning:")
        return None


@st.cache_resource(max_entries=4, show_spinner="Loading the model ...")
def _serving_model(root: str, version: int) -> ServingModel:
    """Kept in memory, keyed by version number, never by a moving alias such as ``champion``."""
    from pipelines.serving.model import ServingModel

    return ServingModel.from_registry(root, str(version))


def champion_model(root: str) -> tuple[pd.DataFrame, int, ServingModel] | None:
    """The runs, the champion's version and its loaded model; None, with the page's empty state shown, if none."""
    all_runs = runs(root)
    _, champion = version_options(all_runs)
    if champion is None:
        empty_state("No model in production yet: train and promote one with", "make demo")
        return None
    model = serving_model(root, champion)
    return None if model is None else (all_runs, champion, model)


def version_options(runs: pd.DataFrame) -> tuple[list[int], int | None]:
    """Registered versions, newest first, and the champion's (None when nothing was promoted)."""
    champion = data.alias_row(runs, data.CHAMPION)
    return [int(v) for v in runs["version"].iloc[::-1]], None if champion is None else int(champion["version"])


def version_label(runs: pd.DataFrame, version: int) -> str:
    return f"v{version} ({runs.loc[runs['version'] == version, 'status'].iloc[0]})"


def day(ts: Any) -> str:
    """A timestamp's UTC date, short enough for a metric tile."""
    return "-" if ts is None or pd.isna(ts) else pd.Timestamp(ts).strftime("%Y-%m-%d")
