"""``gateway train``: train a DP model from the command line.

The model summary goes to stdout (``--json`` for everything), the progress bar
and errors to stderr, like the other commands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from gateway.errors import GatewayError
from gateway.training.models import ACTIVATIONS, MODELS

_DEFAULT_POLICY = "policies/web.yaml"
_DEFAULT_STATE = ".gateway/state.db"

# CLI flag -> training hyper-parameter (only those given are passed on).
_HYPER = ("epochs", "batch_size", "clip", "learning_rate", "optimizer", "noise_multiplier",
          "hidden", "activation", "l2", "units", "holdout", "eval_epsilon")


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train a DP model (DP-SGD) on rows selected by SQL",
        description="Train a differentially private model on the rows a SELECT picks. "
        "The budget is charged before training; only the model is released.")
    p.add_argument("sql", help="row-wise SELECT of feature columns and the label")
    p.add_argument("--label", required=True, help="the column to predict")
    p.add_argument("--model", choices=MODELS, default="logistic")
    p.add_argument("--epsilon", type=float, default=None, help="total epsilon to spend")
    p.add_argument("--delta", type=float, default=None, help="delta to spend (> 0)")
    p.add_argument("--analyst", default=None, help="analyst to charge (in-process)")
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="expected units per step")
    p.add_argument("--clip", type=float, default=None, help="per-unit gradient norm bound C")
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default=None)
    p.add_argument("--noise-multiplier", type=float, default=None,
                   help="sigma (default: solved from --epsilon)")
    p.add_argument("--hidden", default=None, help="mlp hidden widths, e.g. 64 or 64,32")
    p.add_argument("--activation", choices=ACTIVATIONS, default=None)
    p.add_argument("--l2", type=float, default=None)
    p.add_argument("--units", type=int, default=None,
                   help="a public estimate of the number of units (skips the DP count)")
    p.add_argument("--holdout", type=float, default=None,
                   help="fraction of units held out for a DP evaluation (charged)")
    p.add_argument("--eval-epsilon", type=float, default=None)
    p.add_argument("--json", action="store_true", help="print the whole model as JSON")
    p.add_argument("--policy", default=os.environ.get("GATEWAY_POLICY", _DEFAULT_POLICY),
                   help="policy file (default: $GATEWAY_POLICY or policies/web.yaml)")
    p.add_argument("--state", default=os.environ.get("GATEWAY_STATE", _DEFAULT_STATE),
                   help="state database (default: $GATEWAY_STATE or .gateway/state.db)")
    return p


class ProgressBar:
    """A one-line bar on stderr, redrawn at most every 0.1 s."""

    def __init__(self, stream: Any = None, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.start = time.monotonic()
        self._last = -1.0

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < 0.1:
            return
        self._last = now
        done = round(self.width * min(max(fraction, 0.0), 1.0))
        bar = "#" * done + "." * (self.width - done)
        self.stream.write(f"\rtraining [{bar}] {100 * fraction:5.1f}% "
                          f"{now - self.start:6.1f}s")
        if fraction >= 1.0:
            self.stream.write("\n")
        self.stream.flush()


def run_train(args: argparse.Namespace) -> int:
    from gateway.service import Gateway

    hyper = {k: getattr(args, k) for k in _HYPER if getattr(args, k, None) is not None}
    try:
        with Gateway.open(args.policy, args.state) as gw:
            who = gw.ledger.ensure_analyst(args.analyst or "local")
            m = gw.train_as(who, args.sql, args.label, args.model, args.epsilon, args.delta,
                            progress=ProgressBar(), **hyper)
            out = m.to_dict()
    except GatewayError as e:
        from gateway.cli.printers import report_error

        return report_error(e)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(summary(out))
    return 0


def summary(m: dict[str, Any]) -> str:
    p = m["privacy"]
    lines = [
        f"model {m['model_id']} ({m['model']}, label {m['label']}): {m['status']}",
        f"epsilon spent {m['epsilon_spent']:.4g}, delta spent {m['delta_spent']:g}",
        f"DP-SGD: sigma {p['noise_multiplier']:.4g}, sampling rate {p['sampling_rate']:.4g}, "
        f"{p['steps']} steps, clip {p['clip']:g}, expected batch {p['expected_batch']:.0f} "
        f"(units {p['units_source']})",
    ]
    ev = m["metrics"].get("dp_holdout")
    if ev:
        lines.append(f"DP held-out {ev['metric']}: {ev['value']:.4g} (epsilon {ev['epsilon']:g})")
    coef = m.get("coefficients")
    if coef and "weights" in coef:
        lines.append(f"intercept {coef['intercept']:.4g}")
        lines += [f"  {name:<28} {w: .4g}" for name, w in coef["weights"].items()]
    return "\n".join(lines)
