"""What ``python -m flows.<name>`` prints and exits with: the result as JSON, or one line and the CLI's exit code."""

from __future__ import annotations

import json
import sys
from typing import Any

from prefect.states import State

from pipelines.core.errors import ShoprecError


def report(state: State[Any], label: str) -> int:
    """0 with the flow's result on stdout; otherwise the error on one line and ``ShoprecError.exit_code`` (or 1)."""
    if state.is_completed():
        print(json.dumps(state.result(), indent=2, default=str))
        return 0
    error = state.result(raise_on_failure=False)
    print(f"{label} failed: {error}", file=sys.stderr)
    return error.exit_code if isinstance(error, ShoprecError) else 1
