"""`gateway demo`: a tour of the core on the sample data.

Creates an analyst on first run, asks a few DP questions and prints each
answer with its cost, remaining budget and accuracy.  Running it again shows
that repeated questions are answered from the cache for free.
"""

from __future__ import annotations

import sys

from gateway.cli.printers import describe_release, format_table
from gateway.errors import BudgetExceeded, QueryRejected
from gateway.service import Gateway

DEMO_QUERIES: list[tuple[str, str, dict[str, float]]] = [
    ("How many visits?", "SELECT COUNT(*) AS visits FROM visits", {"epsilon": 0.2}),
    ("Visits and spend by country (every public country, empty ones included)",
     "SELECT country, COUNT(*) AS visits, SUM(spend) AS spend FROM visits "
     "GROUP BY country ORDER BY visits DESC LIMIT 8", {"epsilon": 0.5}),
    ("Average spend by device",
     "SELECT device, AVG(spend) AS avg_spend FROM visits GROUP BY device", {"epsilon": 0.3}),
    ("Conversion rate by region (join to a public table)",
     "SELECT c.region, AVG(CASE WHEN v.converted THEN 1 ELSE 0 END) AS conversion "
     "FROM visits v JOIN countries c ON v.country = c.country GROUP BY c.region",
     {"epsilon": 0.3}),
    ("Monthly visitors in the US (COUNT DISTINCT users)",
     "SELECT date_trunc('month', visit_date) AS month, COUNT(DISTINCT user_id) AS users "
     "FROM visits WHERE country = 'US' GROUP BY 1 ORDER BY 1", {"epsilon": 0.3}),
]

REJECTED = "SELECT user_id, spend FROM visits WHERE spend > 1000"


def run_demo(policy: str, state: str) -> int:
    with Gateway.open(policy, state) as gw:
        names = {a.name for a in gw.analysts()}
        if "demo" not in names:
            key = gw.add_analyst("demo")
            print(f"Created analyst 'demo' (API key, shown once: {key})\n")
        for title, sql, kwargs in DEMO_QUERIES:
            print(f"== {title}\n   {sql}")
            try:
                r = gw.query(sql, analyst="demo", epsilon=kwargs["epsilon"])
            except BudgetExceeded as e:
                print(f"   budget exceeded: {e.detail}\n")
                continue
            print(format_table([c.name for c in r.columns], r.rows))
            print(describe_release(r.to_dict()) + "\n")
        print(f"== A query the gateway refuses\n   {REJECTED}")
        try:
            gw.query(REJECTED, analyst="demo")
        except QueryRejected as e:
            print(f"   rejected: {e.detail}\n")
        b = gw.budget("demo")
        print(f"Budget of 'demo': spent epsilon {b['epsilon_spent']:.4g} of "
              f"{b['epsilon_total']:g}, remaining {b['epsilon_remaining']:.4g}")
        print("Run again: repeated questions are answered from the cache and cost nothing.")
    sys.stdout.flush()
    return 0
