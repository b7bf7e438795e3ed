"""How the command line shows results and errors to a person (shared by the commands)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from gateway.errors import BudgetExceeded, GatewayError, QueryRejected


def report_error(e: GatewayError) -> int:
    """Print a gateway error for a person; the exit code says which kind it was."""
    if isinstance(e, BudgetExceeded):
        print(f"budget exceeded: {e.detail}", file=sys.stderr)
        return 3
    if isinstance(e, QueryRejected):
        print(f"rejected: {e.detail}", file=sys.stderr)
        if e.span is not None:
            print(f"  at: {e.span.text!r} (characters {e.span.start}-{e.span.end})",
                  file=sys.stderr)
        return 2
    print(f"error: {e.detail}", file=sys.stderr)
    return 1


def print_result(r: Any, as_json: bool) -> None:
    """A released result (in-process or from the client): the table on stdout, what it
    cost and how accurate it is on stderr."""
    if as_json:
        print(json.dumps(r.to_dict(), indent=2))
        return
    print(format_table([c.name for c in r.columns], r.rows))
    print(describe_release(r.to_dict()), file=sys.stderr)


def describe_release(result: dict[str, Any]) -> str:
    parts = [f"epsilon spent {result['epsilon_spent']:g}, delta spent {result['delta_spent']:g}"
             + (" (cached answer: free)" if result.get("cached") else "")]
    budget = result.get("budget") or {}
    if budget:
        parts.append(f"remaining epsilon {budget['epsilon_remaining']:.4g}, "
                     f"delta {budget['delta_remaining']:.3g}")
    for acc in result.get("accuracy", []):
        ci = acc.get("ci95")
        parts.append(f"{acc['column']}: {acc['mechanism']} noise, scale "
                     f"{acc['noise_scale']:.4g}" + (f", 95% within ±{ci:.4g}" if ci else ""))
    parts.extend(f"note: {n}" for n in result.get("notes", []))
    return "\n".join(parts)


def format_table(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    line = "-+-".join("-" * w for w in widths)
    out = [" | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)), line]
    for r in cells:
        out.append(" | ".join(v.rjust(w) if _numeric(v) else v.ljust(w)
                              for v, w in zip(r, widths, strict=True)))
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e15 else f"{v:.6e}"
    return str(v)


def _numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
