"""The PostgreSQL-wire proxy: BI tools and drivers speak to the gateway as to PostgreSQL.

Layout (each module is small and has one job):

* :mod:`~gateway.pgwire.server` - ``PgWireServer``: listeners, connections, cancel, stop;
* :mod:`~gateway.pgwire.connection` - startup, SCRAM authentication, simple and
  extended query protocol for one socket;
* :mod:`~gateway.pgwire.session` - routing of each statement to the DP core, the
  catalog or a local command; transaction status;
* :mod:`~gateway.pgwire.commands` - SET/SHOW/BEGIN/DECLARE/FETCH/... answered locally;
* :mod:`~gateway.pgwire.catalog` - pg_catalog / information_schema answered from the
  policy's public schema in a DuckDB database that holds no data;
* :mod:`~gateway.pgwire.protocol`, :mod:`~gateway.pgwire.types`,
  :mod:`~gateway.pgwire.output` - bytes on the wire;
* :mod:`~gateway.pgwire.auth`, :mod:`~gateway.pgwire.settings`,
  :mod:`~gateway.pgwire.sqltext` - SCRAM, session settings, SQL text helpers.

The proxy is an adapter: every data query goes through :meth:`Gateway.query_as`, so
it is checked, noised and charged exactly as over HTTP.  See docs/pgwire.md.
"""

from __future__ import annotations

from gateway.pgwire.server import PgWireOptions, PgWireServer

__all__ = ["PgWireOptions", "PgWireServer"]
