"""Errors that the CLI turns into one-line messages (exit code 2) instead of tracebacks."""

from __future__ import annotations


class ShoprecError(Exception):
    """Any expected failure caused by input or configuration, not by a bug."""

    exit_code = 2


class DataError(ShoprecError):
    """Bad input data; the message names the file, the line or column, and the problem."""

    def __init__(self, path: object, problem: str, *, line: int | None = None, column: str | None = None):
        self.path, self.problem, self.line, self.column = str(path), problem, line, column
        where = self.path + (f":{line}" if line is not None else "")
        if column is not None:
            where += f": column '{column}'"
        super().__init__(f"{where}: {problem}")


class ValidationFailed(ShoprecError):
    """The data set did not pass validation under the configured policy; downstream stages must not run."""

    exit_code = 1
