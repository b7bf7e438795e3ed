"""A differentially private SQL gateway.

``Gateway.open(policy)`` is the entry point; see DESIGN §1.2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Gateway"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from gateway.service import Gateway


def __getattr__(name: str) -> Any:
    # Imported lazily so `import gateway.privacy` (pure) does not pull in DuckDB.
    if name == "Gateway":
        from gateway.service import Gateway

        return Gateway
    raise AttributeError(name)
