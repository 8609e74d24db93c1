"""Where each stage reads and writes, relative to the project root; dvc.yaml uses the same layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path = Path(".")

    @property
    def ingested(self) -> Path:
        return self.root / "data" / "ingested"

    @property
    def validated(self) -> Path:
        return self.root / "data" / "validated"

    @property
    def split(self) -> Path:
        return self.root / "data" / "split"

    @property
    def features(self) -> Path:
        return self.root / "data" / "features"

    @property
    def candidate(self) -> Path:
        return self.root / "models" / "candidate"

    @property
    def champion(self) -> Path:
        return self.root / "models" / "champion"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def validation_summary(self) -> Path:
        return self.reports / "validation" / "summary.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def gate(self) -> Path:
        return self.metrics / "gate.json"

    @property
    def registration(self) -> Path:
        return self.metrics / "registration.json"
