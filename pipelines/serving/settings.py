"""API configuration from ``SHOPREC_*`` environment variables (or keyword arguments in tests)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.core.errors import ShoprecError
from pipelines.serving.model import Rules


class Settings(BaseSettings):
    """Everything the API reads at start-up; e.g. ``SHOPREC_ADMIN_TOKEN``, ``SHOPREC_REDIS_URL``."""

    model_config = SettingsConfigDict(env_prefix="SHOPREC_", extra="ignore")

    root: Path = Field(Path("."), description="project root: mlflow.db, serving/, data/incoming/")
    model_ref: str = Field("champion", description="registry version or alias to serve")
    model_dir: Path | None = Field(None, description="serve this model directory instead of the registry")
    store_dir: Path | None = Field(None, description="precomputed lists (default <root>/serving)")
    events_dir: Path | None = Field(None, description="event log directory (default <root>/data/incoming)")
    admin_token: SecretStr | None = Field(None, description="bearer token for reload and event ingestion")
    redis_url: str | None = Field(None, description="cache in Redis instead of in process, e.g. redis://127.0.0.1:6379/0")
    cache_size: int = Field(100_000, ge=0, description="in-process LRU entries (0 disables the cache)")
    cache_max_mb: int = Field(256, ge=1, description="in-process LRU: at most this many MB of response bodies")
    cache_ttl_s: int = Field(600, ge=1, description="Redis entry lifetime")
    live_max_events: int = Field(50, ge=1, description="live events kept per shopper (the newest)")
    live_ttl_s: int = Field(172_800, ge=1, description="a shopper's live events are forgotten this long after "
                                                       "their last event")
    live_max_shoppers: int = Field(100_000, ge=1, description="in-process live state: shoppers kept (least "
                                                              "recently active dropped first)")
    blocked_items: list[str] = Field(default_factory=list, description="item ids never recommended (JSON list)")
    blocked_items_file: Path | None = Field(None, description="more blocked / out-of-stock ids, one per line; "
                                                              "re-read when it changes")
    max_per_category: int | None = Field(None, ge=1, description="at most this many items of one category per list")
    explore_share: float = Field(0.1, ge=0, le=0.5, description="share of each list's slots for products added "
                                                                "since training (0: none)")
    impressions: bool = Field(True, description="log every served list durably before answering (request id, "
                                                "shopper, model version, arm, items): what online experiments "
                                                "attribute feedback to")
    impressions_max_pending: int = Field(10_000, ge=10, description="served lists waiting for the disk at most; "
                                                                    "past it requests get 503")
    challenger_ref: str | None = Field("challenger", description="registry alias or version of an online "
                                       "experiment's challenger; while it resolves, challenger_share of shoppers "
                                       "get its lists (unset or a missing alias: everyone gets the champion)")
    challenger_share: float = Field(0.1, ge=0, le=1, description="share of shoppers on the challenger, by a "
                                                                 "stable hash of the shopper id")
    experiment: str | None = Field(None, description="experiment id salting the shoppers' arm hash (default: "
                                                     "'v<champion>-vs-v<challenger>')")
    reload_poll_s: float = Field(30.0, ge=0, description="how often to check the registry alias (0: never)")
    max_body_bytes: int = Field(262_144, ge=1024, description="larger request bodies get 413")

    @property
    def store_path(self) -> Path:
        return self.store_dir or self.root / "serving"

    @property
    def events_path(self) -> Path:
        return self.events_dir or self.root / "data" / "incoming"

    def rules(self) -> Rules:
        """The business rules now: the configured list plus the file's current content."""
        blocked = set(self.blocked_items)
        if self.blocked_items_file is not None:
            try:
                text = self.blocked_items_file.read_text()
            except OSError as exc:
                raise ShoprecError(f"{self.blocked_items_file}: cannot read the blocked items file ({exc})") from exc
            blocked |= {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}
        return Rules(frozenset(blocked), self.max_per_category, self.explore_share)

    def rules_mtime(self) -> float | None:
        """The blocked file's modification time (None without a file): a change means new rules."""
        if self.blocked_items_file is None:
            return None
        try:
            return self.blocked_items_file.stat().st_mtime
        except OSError:
            return None
