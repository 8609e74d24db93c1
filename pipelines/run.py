"""The whole pipeline in one process: the same stage functions that ``dvc repro`` runs one by one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from pipelines.core.config import Params
from pipelines.core.errors import ShoprecError
from pipelines.core.paths import Paths

if TYPE_CHECKING:  # the two-stage module pulls in the models; stages import them only when they run
    from pipelines.models.two_stage import RunJobs


RUN_LOCK_TIMEOUT_S = 6 * 3600  # a second run waits for the first (a nightly run overlapping a manual one)


@contextmanager
def run_lock(paths: Paths) -> Iterator[None]:
    """One pipeline run per project directory at a time: two runs' stages would interleave in data/ and models/."""
    paths.root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(paths.root / ".shoprec-run.lock")
    try:
        lock.acquire(timeout=RUN_LOCK_TIMEOUT_S)
    except Timeout:
        raise ShoprecError(f"{paths.root.resolve()}: another pipeline run still holds {lock.lock_file}") from None
    try:
        yield
    finally:
        lock.release()


def stages(
    params: Params, paths: Paths, source: str | None = None, run_jobs: RunJobs | None = None,
) -> list[tuple[str, Callable[[], Any]]]:
    """Each stage as (name, thunk), in dependency order; heavy libraries are imported when a stage runs.

    ``champion`` records which registered champion the new candidate is measured against
    (``models/champion.json``); evaluate reads the champion from there.

    ``run_jobs`` runs the train stage's independent model fits (default: one after another).
    """

    def ingest() -> Any:
        from pipelines.data.ingest import ingest as run

        return run(source or params.data.source, paths.ingested, progress=True, synthetic=params.synthetic)

    def validate() -> Any:
        from pipelines.data.validate import validate as run

        return run(paths.ingested, paths.validated, paths.reports, params.validate_)

    def split() -> Any:
        from pipelines.data.split import run_split

        return run_split(paths.validated, paths.split, params.split)

    def features() -> Any:
        from pipelines.features.encode import run_features

        return run_features(paths.split, paths.features)

    def train() -> Any:
        from pipelines.models.train import run_train

        return run_train(paths.features, paths.candidate, params.train, params.split.exclude_seen, run_jobs)

    def champion() -> Any:
        from pipelines.registry.versions import write_champion_record

        return write_champion_record(paths.root)

    def evaluate() -> Any:
        from pipelines.evaluation.champion import Champion
        from pipelines.evaluation.evaluate import run_evaluate
        from pipelines.registry.versions import recorded_champion

        found = recorded_champion(paths.root)
        champion = Champion.load(*found) if found else None
        return run_evaluate(paths.features, paths.candidate, paths.metrics, params.evaluate, params.split, champion)

    def gate() -> Any:
        from pipelines.evaluation.gate import run_gate

        return run_gate(paths.metrics / "metrics.json", paths.validation_summary, paths.candidate,
                        paths.champion, paths.gate, params.gate)

    def register() -> Any:
        from pipelines.registry.versions import run_register

        return run_register(paths, params)

    return [("ingest", ingest), ("validate", validate), ("split", split), ("features", features),
            ("train", train), ("champion", champion), ("evaluate", evaluate), ("gate", gate), ("register", register)]
