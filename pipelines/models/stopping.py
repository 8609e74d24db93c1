"""How an iteratively trained model stopped, recorded with it (``training_``) and in metrics.json.

Training length is set in epochs, with early stopping on validation; the wall clock is only a safety cap. A
model stopped by the cap has a result that depends on the machine's speed and load, so that is recorded, never
silent.
"""

from __future__ import annotations

from typing import Any, Literal

StoppedBy = Literal["patience", "max_epochs", "time cap"]
TIME_CAP: StoppedBy = "time cap"


def training_record(epochs: int, best_epoch: int, stopped_by: StoppedBy, seconds: float,
                    cap_s: float | None) -> dict[str, Any]:
    """What ``training_`` holds: epochs run, the epoch kept, why it stopped, wall seconds and the cap."""
    return {"epochs": int(epochs), "best_epoch": int(best_epoch), "stopped_by": stopped_by,
            "seconds": round(float(seconds), 1), "time_cap_s": cap_s}


def capped_fits(report: dict[str, Any]) -> list[str]:
    """The fits in a model's ``report`` that the safety cap cut short: ``model`` itself, ``source:NAME`` or
    ``ranker:NAME``. Empty means the result depends on data, code and parameters only, not on the machine."""
    found = ["model"] if report.get("training", {}).get("stopped_by") == TIME_CAP else []
    for kind in ("sources", "rankers"):
        for name, part in report.get(kind, {}).items():
            if part.get("training", {}).get("stopped_by") == TIME_CAP:
                found.append(f"{kind[:-1]}:{name}")
    return found
