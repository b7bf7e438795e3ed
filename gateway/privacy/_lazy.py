"""dp-accounting, imported on first use.

Importing it pulls in most of SciPy (about two seconds here), which every CLI
call and every process would pay even when basic composition answers the
budget question, as it usually does.
"""

from __future__ import annotations

from types import ModuleType


def pld() -> ModuleType:
    from dp_accounting.pld import privacy_loss_distribution

    return privacy_loss_distribution


def pld_common() -> ModuleType:
    from dp_accounting.pld import common

    return common


def dp_event() -> ModuleType:
    from dp_accounting import dp_event as module

    return module


def rdp() -> ModuleType:
    from dp_accounting.rdp import rdp_privacy_accountant

    return rdp_privacy_accountant
