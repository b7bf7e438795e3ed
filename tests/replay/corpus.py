"""The replay corpus (``corpus.yaml``): peers' documented queries over policies/web.yaml.

Shared by ``tests/replay/test_replay.py`` and ``bench/bench_replay.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CORPUS = Path(__file__).with_name("corpus.yaml")

PEERS = ("smartnoise", "zetasql", "google-dp", "tumult", "opendp", "pipelinedp")
KEYS = {"id", "source", "sql", "epsilon", "delta", "mechanism", "expect", "why", "dp_clause",
        "original", "note", "known_gap"}
DEFAULT_EPSILON = 1.0


@dataclass(frozen=True)
class Entry:
    id: str
    source: str
    sql: str
    epsilon: float
    delta: float
    mechanism: str | None
    refused: str | None  # the expected QueryRejected.rule; None when it must be answered
    why: str | None
    known_gap: str | None

    @property
    def peer(self) -> str:
        """Which peer the query comes from: the part of ``source`` before the first colon."""
        return self.source.split(":", 1)[0].strip()

    @property
    def expect(self) -> str:
        return "answered" if self.refused is None else f"refused: {self.refused}"


def _expect(raw: Any, where: str) -> str | None:
    """``answered`` -> None; ``{refused: rule}`` or ``"refused: rule"`` -> rule."""
    if raw == "answered":
        return None
    if isinstance(raw, dict) and set(raw) == {"refused"} and isinstance(raw["refused"], str):
        return raw["refused"]
    if isinstance(raw, str) and raw.startswith("refused:") and raw.split(":", 1)[1].strip():
        return raw.split(":", 1)[1].strip()
    raise ValueError(f"{where}: expect must be 'answered' or {{refused: <rule>}}, got {raw!r}")


def load(path: Path = CORPUS) -> list[Entry]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    out = []
    for i, raw in enumerate(data["entries"]):
        where = f"{path.name} entry {i} ({raw.get('id', '?')})"
        unknown = set(raw) - KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        for key in ("id", "source", "sql", "expect"):
            if not raw.get(key):
                raise ValueError(f"{where}: {key} is required")
        out.append(Entry(
            id=str(raw["id"]), source=str(raw["source"]), sql=str(raw["sql"]),
            epsilon=float(raw.get("epsilon", DEFAULT_EPSILON)), delta=float(raw.get("delta", 0.0)),
            mechanism=raw.get("mechanism"), refused=_expect(raw["expect"], where),
            why=raw.get("why"), known_gap=raw.get("known_gap")))
    return out
