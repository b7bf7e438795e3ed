"""The stages of a query after SQL planning (gateway/sql/):

noise (calibrate ε/δ into noise per statistic; the charge is derived from it) ->
[reserve in state/ledger] -> [execute in engine/] -> perturb (noisy statistics:
the release) -> results (the release stored, the answer cache) -> postprocess
(the analyst's SELECT/HAVING/ORDER BY over the noisy table).  ``prepared`` keeps
what is decided before data is touched, per request.
"""
