"""SOURCE strings (``kind:PATH[,key=value...]``): parsed and checked up front, so a typo fails before any work."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipelines.core.config import SyntheticParams
from pipelines.core.errors import DataError
from pipelines.data.ingest.columns import MAPPING_KEYS, Mapping
from pipelines.data.schema import EVENT_TYPES, REQUIRED_EVENT_COLUMNS

_OPTIONS: dict[str, frozenset[str]] = {
    "taobao": frozenset(),
    "retailrocket": frozenset(),
    "seqfile": frozenset({"attributes"}),
    "csv": frozenset({*MAPPING_KEYS, "ts_unit", "header", "sep", "map"}),
    "parquet": frozenset({*MAPPING_KEYS, "ts_unit", "map"}),
    "synthetic": frozenset(SyntheticParams.model_fields),
}
# Split options only at commas that start a ``key=``, so that ``sep=,`` stays one option.
_OPTION_SPLIT = re.compile(r",(?=[A-Za-z_]+=)")
_SEPARATORS = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}


@dataclass
class SourceSpec:
    """A parsed SOURCE string; ``path`` is empty only for ``synthetic``."""

    kind: str
    path: str
    options: dict[str, str] = field(default_factory=dict)


def parse_source(spec: str) -> SourceSpec:
    """Parse and check ``kind:PATH[,key=value...]`` up front, so a typo fails before any work is done."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in _OPTIONS:
        raise DataError(spec, f"unknown source kind '{kind}' (expected one of: {', '.join(_OPTIONS)})")
    parts = _OPTION_SPLIT.split(rest) if rest else []
    path = ""
    if kind != "synthetic":
        path = parts.pop(0).strip() if parts else ""
        if not path:
            raise DataError(spec, f"missing path (expected {kind}:PATH)")
    options: dict[str, str] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq:
            raise DataError(spec, f"bad option '{part}' (expected key=value)")
        if key not in _OPTIONS[kind]:
            allowed = ", ".join(sorted(_OPTIONS[kind])) or "none"
            raise DataError(spec, f"unknown option '{key}' for {kind} (allowed: {allowed})")
        options[key] = value
    source = SourceSpec(kind, path, options)
    if kind in ("csv", "parquet"):
        column_mapping(spec, options)
        csv_format(spec, options)
    return source


def csv_format(spec: str, options: dict[str, str]) -> tuple[bool, str]:
    """The ``header`` and ``sep`` options of a generic CSV source."""
    header = options.get("header", "true").lower()
    if header not in ("true", "false"):
        raise DataError(spec, f"option 'header': expected true or false, got '{header}'")
    sep = _SEPARATORS.get(options.get("sep", ","), options.get("sep", ","))
    if len(sep) != 1:
        raise DataError(spec, f"option 'sep': expected one character (or tab, pipe ...), got '{sep}'")
    return header == "true", sep


def column_mapping(spec: str, options: dict[str, str]) -> Mapping:
    """Column mapping of a generic source; without a header, columns are named by number, 1 first."""
    if options.get("header", "true").lower() == "false":
        columns = {name: str(number) for number, name in enumerate(REQUIRED_EVENT_COLUMNS, 1)}
    else:
        columns = {name: name for name in REQUIRED_EVENT_COLUMNS}
    columns |= {key: options[key] for key in MAPPING_KEYS if key in options}
    ts_unit = options.get("ts_unit", "iso")
    if ts_unit not in ("s", "ms", "iso"):
        raise DataError(spec, f"option 'ts_unit': expected s, ms or iso, got '{ts_unit}'")
    events = {name: name for name in EVENT_TYPES} | _event_map(spec, options.get("map", ""))
    return Mapping(columns, events, ts_unit)


def _event_map(spec: str, text: str) -> dict[str, str]:
    """Parse ``map=pv:view;buy:purchase`` into {source value: canonical event type}."""
    mapping: dict[str, str] = {}
    for pair in filter(None, text.split(";")):
        source_value, colon, target = pair.partition(":")
        if not colon or target not in EVENT_TYPES:
            raise DataError(spec, f"option 'map': bad pair '{pair}' (expected VALUE:{'|'.join(EVENT_TYPES)})")
        mapping[source_value] = target
    return mapping
