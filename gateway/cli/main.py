"""The `gateway` command line: a thin layer over :class:`gateway.Gateway`.

Results go to stdout, progress and errors to stderr, so
``KEY=$(gateway analyst add alice)`` captures only the key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from gateway.cli.printers import format_table, print_result, report_error
from gateway.errors import GatewayError

DEFAULT_POLICY = "policies/web.yaml"
DEFAULT_STATE = ".gateway/state.db"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", default=os.environ.get("GATEWAY_POLICY", DEFAULT_POLICY),
                   help="policy file (default: $GATEWAY_POLICY or policies/web.yaml)")
    p.add_argument("--state", default=os.environ.get("GATEWAY_STATE", DEFAULT_STATE),
                   help="state database (default: $GATEWAY_STATE or .gateway/state.db)")


def _budget_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epsilon", type=float, default=None, help="epsilon to spend")
    p.add_argument("--ci95", type=float, default=None, metavar="HALF_WIDTH",
                   help="instead of --epsilon: spend the smallest epsilon whose predicted 95%% "
                   "half-width is within this target in every noisy column")
    p.add_argument("--delta", type=float, default=None, help="delta to spend")
    p.add_argument("--mechanism", choices=["laplace", "gaussian"], default=None)


def _remote(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None,
                   help="ask a running `gateway serve` at this URL instead of in-process")
    p.add_argument("--key", default=os.environ.get("GATEWAY_KEY"),
                   help="API key for --url (default: $GATEWAY_KEY)")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--pg-port", type=int, default=5433,
                   help="PostgreSQL-wire proxy port (default 5433)")
    p.add_argument("--no-pg", action="store_true", help="do not start the PostgreSQL proxy")
    p.add_argument("--workers", type=int, default=4,
                   help="threads running queries (default 4)")
    p.add_argument("--queue", type=int, default=64,
                   help="requests that may wait for a worker before 503 (default 64)")
    p.add_argument("--request-timeout", type=float, default=65.0,
                   help="seconds before a request answers 503 (default 65)")
    p.add_argument("--max-body", type=int, default=1 << 20,
                   help="largest request body in bytes (default 1 MiB)")
    p.add_argument("--demo", action="store_true",
                   help="create the analyst 'demo' on first start and print how to use it")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Differentially private SQL")
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("query", help="run a DP query")
    q.add_argument("sql")
    q.add_argument("--analyst", default=None, help="analyst to charge (in-process)")
    q.add_argument("--json", action="store_true", help="print the full result as JSON")
    _budget_args(q)
    _common(q)
    _remote(q)

    e = sub.add_parser("explain", help="show the plan, cost and accuracy; charges nothing")
    e.add_argument("sql")
    _budget_args(e)
    _common(e)
    _remote(e)

    a = sub.add_parser("analyst", help="manage analysts")
    asub = a.add_subparsers(dest="analyst_command", required=True)
    add = asub.add_parser("add", help="create an analyst; prints only the new API key")
    add.add_argument("name")
    add.add_argument("--epsilon", type=float, default=None)
    add.add_argument("--delta", type=float, default=None)
    add.add_argument("--admin", action="store_true")
    _common(add)
    lst = asub.add_parser("list", help="list analysts and their budgets")
    _common(lst)

    b = sub.add_parser("budget", help="show spent and remaining budget")
    b.add_argument("name", nargs="?", default=None)
    _common(b)
    _remote(b)

    srv = sub.add_parser("serve", help="serve HTTP (and the PostgreSQL-wire proxy)")
    _serve_args(srv)
    _common(srv)

    s = sub.add_parser("sample-data", help="generate the sample data set")
    s.add_argument("--rows", default="100000")
    s.add_argument("--out", default="sample_data")
    s.add_argument("--seed", default="7")

    d = sub.add_parser("demo", help="create an analyst and run a few DP queries")
    _common(d)

    from gateway.cli.train import add_train_parser

    add_train_parser(sub)  # takes --policy and --state itself
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`gateway budget | head`): nothing is left to say, and the
        # interpreter's last flush must not print a traceback either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sample-data":
        from gateway.cli.sample_data import main as sample_main

        return sample_main(["--rows", args.rows, "--out", args.out, "--seed", args.seed])
    if args.command == "train":
        from gateway.cli.train import run_train

        return run_train(args)
    if getattr(args, "url", None):
        return _run_remote(args)
    try:
        if args.command == "serve":
            from gateway.cli.serve import main as serve_main

            return serve_main(args)
        return _run(args)
    except GatewayError as e:
        return report_error(e)


def _run(args: argparse.Namespace) -> int:
    from gateway.service import Gateway

    if args.command == "demo":
        from gateway.cli.demo import run_demo

        return run_demo(args.policy, args.state)
    with Gateway.open(args.policy, args.state) as gw:
        if args.command == "query":
            print_result(gw.query(args.sql, analyst=args.analyst, epsilon=args.epsilon,
                                   delta=args.delta, mechanism=args.mechanism,
                                   ci95=args.ci95), args.json)
        elif args.command == "explain":
            ex = gw.explain(args.sql, epsilon=args.epsilon, delta=args.delta,
                            mechanism=args.mechanism, ci95=args.ci95)
            print(json.dumps(ex.to_dict(), indent=2, default=str))
        elif args.command == "analyst":
            if args.analyst_command == "add":
                print(gw.add_analyst(args.name, epsilon=args.epsilon, delta=args.delta,
                                     admin=args.admin))
            else:
                rows = []
                for a in gw.analysts():
                    b = gw.budget_of(a)
                    rows.append((a.name, a.role, a.epsilon, a.delta,
                                 round(b["epsilon_spent"], 6), round(b["epsilon_remaining"], 6)))
                print(format_table(["name", "role", "epsilon", "delta", "epsilon_spent",
                                    "epsilon_remaining"], rows))
        elif args.command == "budget":
            print(json.dumps(gw.budget(args.name), indent=2))
    return 0


def _run_remote(args: argparse.Namespace) -> int:
    """query/explain/budget against a running server: same output, same exit codes."""
    from gateway import client

    if not args.key:
        print("error: --url needs --key KEY (or $GATEWAY_KEY)", file=sys.stderr)
        return 1
    try:
        with client.connect(args.url, api_key=args.key) as conn:
            if args.command == "query":
                print_result(conn.query(args.sql, epsilon=args.epsilon, delta=args.delta,
                                         mechanism=args.mechanism, ci95=args.ci95), args.json)
            elif args.command == "explain":
                print(json.dumps(conn.explain(args.sql, epsilon=args.epsilon, delta=args.delta,
                                              mechanism=args.mechanism, ci95=args.ci95),
                                 indent=2))
            elif args.command == "budget":
                b = conn.budget()
                if args.name and args.name != b.get("analyst"):
                    print("error: over --url the budget shown is the key holder's own",
                          file=sys.stderr)
                    return 1
                print(json.dumps(b, indent=2))
    except client.Error as e:
        kind = getattr(e, "type", None)
        if kind == "budget_exceeded":
            print(f"budget exceeded: {e}", file=sys.stderr)
            return 3
        if kind == "query_rejected":
            print(f"rejected: {e}", file=sys.stderr)
            span = (getattr(e, "problem", None) or {}).get("span")
            if span:
                print(f"  at: {span['text']!r} (characters {span['start']}-{span['end']})",
                      file=sys.stderr)
            return 2
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
