"""DP model training over SQL-selected rows (DP-SGD), and the model registry.

* :mod:`gateway.sql.selection` – the training query: row-wise, unit-attributed;
* :mod:`.encoding` – features and labels encoded from public metadata only;
* :mod:`.models` – linear, logistic, softmax regression and small MLPs in numpy;
* :mod:`.dpsgd` – user-level DP-SGD (Poisson sampling of units, per-unit clipping,
  secure Gaussian noise on a grid);
* :mod:`.accounting` – what a run costs (PLD accountant, σ solved for a target ε);
* :mod:`.evaluate` – optional DP evaluation on held-out units;
* :mod:`.service` – select → charge → read → train → register, for the Gateway;
* :mod:`.registry`, :mod:`.model` – stored models and the released model object;
* :mod:`.cli` – ``gateway train``;
* :mod:`.nonprivate` – the non-private fit, for tests and benchmarks only.
"""
