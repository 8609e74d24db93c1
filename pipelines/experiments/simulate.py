"""Closed-loop simulation of an online experiment: generated shoppers use the real API and click what they would
actually like, and the online evaluation decides on what they did.

The shoppers are the synthetic generator's users (``pipelines.data.generate.ground_truth``): a session opens on a
popular item of one of their interests, asks for a list, examines it top-down (rank r is looked at with
probability 1 / log2(r + 1)) and clicks an examined item with the probability that the generator's walk would
view it next; a click may turn into a cart and a purchase at the generator's funnel rates. A click moves the
shopper to that item and the next list is asked for (it reflects the click: live state); a list without a click
ends the session. Everything runs through the API app in process (``TestClient``), with its event log and
impressions in a scratch directory, then ``pipelines.experiments.online.look`` reads them.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.core.config import ExperimentParams, SyntheticParams
from pipelines.data.generate import GroundTruth, ground_truth

log = logging.getLogger(__name__)

LIST_K = 10
MAX_STEPS = 8  # lists per session at most
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Choice:
    """What a shopper did with one list: the clicked item's index in it (None: nothing) and the actions on it."""

    clicked: int | None
    actions: tuple[str, ...]


def choose(truth: GroundTruth, user: int, current: int, listed: np.ndarray, rng: np.random.Generator) -> Choice:
    """Examine ``listed`` (item numbers, best first) top-down; click the first examined item the shopper wants."""
    want = truth.next_view(user, current, listed)
    examined = rng.random(len(listed)) < 1.0 / np.log2(np.arange(len(listed)) + 2.0)
    clicks = np.flatnonzero(examined & (rng.random(len(listed)) < want))
    if not len(clicks):
        return Choice(None, ())
    actions = ["view"]
    if rng.random() < truth.p_cart:
        actions.append("cart")
    if rng.random() < truth.p_purchase:
        actions.append("purchase")
    return Choice(int(clicks[0]), tuple(actions))


def _item_number(item_id: str) -> int:
    """``i<n>`` -> n (the generator's naming); -1 for anything else (e.g. a product added through the API)."""
    return int(item_id[1:]) if item_id.startswith("i") and item_id[1:].isdigit() else -1


def _session(client: Any, truth: GroundTruth, user: int, rng: np.random.Generator, auth: dict[str, str]) -> int:
    """One shopper's session through the API; returns the number of lists asked for."""
    current = truth.session_start(user, rng)
    opening = {"user_id": f"u{user}", "item_id": f"i{current}", "event_type": "view",
               "ts": datetime.now(UTC).isoformat()}  # the product page the session opens on
    client.post("/v1/events", json={"events": [opening]}, headers=auth).raise_for_status()
    for step in range(MAX_STEPS):
        body = client.get(f"/v1/users/u{user}/recommendations", params={"k": LIST_K}).json()
        listed = np.array([_item_number(item["item_id"]) for item in body["items"]], dtype=np.int64)
        choice = choose(truth, user, current, listed, rng)
        if choice.clicked is None:
            return step + 1
        item_id = body["items"][choice.clicked]["item_id"]
        now = datetime.now(UTC).isoformat()
        events = [{"user_id": f"u{user}", "item_id": item_id, "event_type": kind, "ts": now,
                   "request_id": body["request_id"]} for kind in choice.actions]
        client.post("/v1/events", json={"events": events}, headers=auth).raise_for_status()
        current = int(listed[choice.clicked])
    return MAX_STEPS


def simulate(root: str | Path, synthetic: SyntheticParams, champion_ref: str, challenger_ref: str, sessions: int,
             seed: int = 0, share: float = 0.5, params: ExperimentParams | None = None,
             looks: int = 1) -> dict[str, Any]:
    """Run ``sessions`` simulated shopper sessions against the API serving ``champion_ref`` and, for ``share`` of
    the shoppers, ``challenger_ref`` (registry versions or aliases under ``root``), reading the experiment
    ``looks`` times at even intervals as the hourly flow would; return the first reading that decided (else the
    last) with the simulation's facts. ``synthetic`` are the parameters the shoppers' data set was generated with
    (their ground truth)."""
    from fastapi.testclient import TestClient

    from pipelines.experiments.online import look, prices_of
    from pipelines.registry import versions as registry
    from pipelines.serving.app import create_app
    from pipelines.serving.settings import Settings

    params = params or ExperimentParams()
    champion, challenger = (str(registry.show(ref, root)["version"]) for ref in (champion_ref, challenger_ref))
    prices = prices_of(registry.local_dir(registry.show(champion, root)["source"], root))
    truth = ground_truth(synthetic)
    rng = np.random.default_rng(seed)
    token = secrets.token_hex(16)
    experiment = f"sim-{seed}"
    started = time.monotonic()
    users = rng.integers(0, synthetic.users, size=sessions)
    ends = np.linspace(0, sessions, looks + 1).round().astype(int)[1:]
    with tempfile.TemporaryDirectory(prefix="shoprec-sim-") as scratch:
        settings = Settings(root=Path(root), model_ref=champion, challenger_ref=challenger, challenger_share=share,
                            experiment=experiment, events_dir=Path(scratch), store_dir=Path(scratch) / "no-store",
                            admin_token=token, reload_poll_s=0)
        auth = {"Authorization": f"Bearer {token}"}
        lists, done = 0, 0
        with TestClient(create_app(settings)) as client:
            _wait_ready(client)
            for end in ends:
                lists += sum(_session(client, truth, int(user), rng, auth) for user in users[done:end])
                done = int(end)
                record = look(Path(scratch), params, champion, challenger, experiment, prices)
                log.info("after %d sessions (%d lists, %.0f s): %s", done, lists, time.monotonic() - started,
                         record["decision"])  # progress, shown with shoprec -v
                if record["decision"] != "continue":
                    break
    return record | {"simulation": {"sessions": done, "lists": lists, "seed": seed, "share": share, "looks": looks,
                                    "seconds": round(time.monotonic() - started, 1)}}


def _wait_ready(client: Any) -> None:
    """The models load in the background: wait for /readyz."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the API was not ready within {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.1)
