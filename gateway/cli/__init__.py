"""The command line: `gateway serve | query | explain | analyst | budget | train | demo
| sample-data`, thin over the core (or over HTTP with --url)."""

from gateway.cli.main import main

__all__ = ["main"]
