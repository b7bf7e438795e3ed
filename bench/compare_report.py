"""docs/accuracy.md, its plots and the stdout summary, from one bench/compare.py run.

Every number written here is taken from the ``Results`` of that run; nothing is typed in.
"""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bench.compare import CompareQuery, Results

SYSTEM_NAMES = {"gateway": "gateway", "smartnoise": "SmartNoise", "exact": "DuckDB (exact)"}


# --------------------------------------------------------------------------- formatting


def pct(x: float | None) -> str:
    if x is None:
        return "–"
    if x == 0:
        return "0%"
    if math.isinf(x):
        return "∞"
    return f"{100 * x:.3g}%"


def ratio(x: float | None) -> str:
    if x is None:
        return "–"
    if math.isinf(x):
        return "∞"
    return f"{x:.2g}" if x < 10 else f"{x:.0f}"


def num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    if float(x).is_integer() and abs(x) < 1e6:
        return f"{int(x):,}"
    return f"{x:.{digits}g}"


def ms(x: float | None) -> str:
    return "–" if x is None else (f"{x:.1f}" if x < 100 else f"{x:,.0f}")


def eps_label(e: float) -> str:
    return f"{e:g}"


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _sn_tau(res: Results, q: CompareQuery, eps: float) -> float | None:
    """SmartNoise's keycount threshold (users) for the query at total ε."""
    info = res.info[q.key]
    if not info.sn_thresholded or not info.sn_mechanisms:
        return None
    m = _max_ids(res, q)
    e = eps / len(info.sn_mechanisms)
    return m * (1 - math.log(2 * res.cfg.delta / m) / e)


def _max_ids(res: Results, q: CompareQuery) -> int:
    mr = res.inputs.sn_policy["tables"][q.table].get("max_rows_per_unit", 1)
    return int(mr["max"]) if isinstance(mr, dict) else int(mr)


def _family_queries(res: Results, family: str) -> list[CompareQuery]:
    return [q for q in res.queries if q.family == family]


def _has_sn(res: Results) -> bool:
    return "smartnoise" in res.systems


# --------------------------------------------------------------------------- headline


def key_figures(res: Results) -> dict[str, Any]:
    """The median over queries of (gateway error / SmartNoise error): overall, per ε, per
    family."""
    out: dict[str, Any] = {
        "overall": median(res.ratios()),
        "per_eps": {e: median(res.ratios(eps=e)) for e in res.cfg.epsilons},
        "informative": median(res.ratios(informative=True)),
        "blank": len(res.ratios()) - len(res.ratios(informative=True)),
        "cells": len(res.ratios()),
        "per_family": {}, "per_family_informative": {}, "per_family_blank": {}}
    for fam in _families(res):
        qs = _family_queries(res, fam)
        out["per_family"][fam] = median(res.ratios(qs))
        out["per_family_informative"][fam] = median(res.ratios(qs, informative=True))
        out["per_family_blank"][fam] = len(res.ratios(qs)) - len(res.ratios(qs, informative=True))
    return out


def _families(res: Results) -> list[str]:
    from bench.compare import FAMILIES

    return [f for f in FAMILIES if _family_queries(res, f)]


def _family_error(res: Results, system: str, fam: str, eps: float) -> float | None:
    return median([res.error(system, q.key, eps) for q in _family_queries(res, fam)])


# --------------------------------------------------------------------------- stdout


def summary(res: Results) -> str:
    eps = res.cfg.epsilons
    sn = _has_sn(res)
    lines = [f"\n== Gateway vs SmartNoise vs exact DuckDB: {res.inputs.visits_rows:,} visits, "
             f"{res.inputs.ngram_rows:,} n-gram rows, {res.cfg.reps} reps, delta "
             f"{res.cfg.delta:g} ==",
             "median relative error (gateway / SmartNoise, ratio) per epsilon; "
             "unreleased groups count as 100%"]
    head = f"{'query':22s} " + " ".join(f"{'eps=' + eps_label(e):>27s}" for e in eps)
    lines.append(head)
    for q in res.queries:
        cells = []
        for e in eps:
            g = res.error("gateway", q.key, e)
            if sn:
                s = res.error("smartnoise", q.key, e)
                cells.append(f"{pct(g):>8s} /{pct(s):>8s} ={ratio(res.ratio(q.key, e)):>6s}x")
            else:
                cells.append(f"{pct(g):>27s}")
        lines.append(f"{q.key:22s} " + " ".join(f"{c:>27s}" for c in cells))
    if sn:
        k = key_figures(res)
        lines.append("\nratio gateway/SmartNoise by family (median over queries and epsilons): "
                     + ", ".join(f"{f} {ratio(v)} ({ratio(k['per_family_informative'][f])} "
                                 f"without blank cells)" for f, v in k["per_family"].items()))
        lines.append("median over queries of (gateway median rel. error / SmartNoise median "
                     "rel. error): " + ", ".join(f"eps={eps_label(e)}: {ratio(v)}"
                                                 for e, v in k["per_eps"].items())
                     + f"; over all queries and epsilons: {ratio(k['overall'])} (without the "
                     f"{k['blank']} of {k['cells']} cells where neither released the median "
                     f"group: {ratio(k['informative'])})")
    lines.append(f"\nreleased groups (of those in the data), median over reps, at eps="
                 f"{eps_label(_headline_eps(res))}")
    for q in res.queries:
        if not q.grouped:
            continue
        e = _headline_eps(res)
        parts = [f"{SYSTEM_NAMES[s]} {num(res.run(s, q.key, e).median_released)}"
                 for s in res.systems if res.run(s, q.key, e)]
        lines.append(f"  {q.key:22s} {len(res.info[q.key].truth):>6,} in data: "
                     + ", ".join(parts))
    lines.append(f"\nmedian ms per query at eps={eps_label(_headline_eps(res))}")
    for q in res.queries:
        e = _headline_eps(res)
        parts = [f"{SYSTEM_NAMES[s]} {ms(res.run(s, q.key, e).median_ms)}"
                 for s in res.systems if res.run(s, q.key, e)]
        lines.append(f"  {q.key:22s} " + ", ".join(parts)
                     + f", exact DuckDB {ms(res.info[q.key].exact_ms)}")
    fails = _failures(res)
    if fails:
        lines.append("\nfailures:")
        lines += [f"  {f}" for f in fails]
    lines.append(f"\nrun took {res.seconds:.0f}s")
    return "\n".join(lines)


def _headline_eps(res: Results) -> float:
    from bench.compare import HEADLINE_EPS

    eps = res.cfg.epsilons
    return HEADLINE_EPS if HEADLINE_EPS in eps else min(eps, key=lambda e: abs(math.log(e)))


def _failures(res: Results) -> list[str]:
    out = []
    for (system, q, e), r in res.runs.items():
        if r.failure:
            out.append(f"{SYSTEM_NAMES[system]} {q} eps={eps_label(e)}: "
                       f"{r.failures}/{r.reps} calls failed: {r.failure}")
    return out


# --------------------------------------------------------------------------- plots


def plots(res: Results, png_dir: Path) -> dict[str, str]:
    """PNG files by name (relative file names); empty when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    png_dir.mkdir(parents=True, exist_ok=True)
    for old in png_dir.glob("*.png"):
        old.unlink()
    out: dict[str, str] = {}
    eps = list(res.cfg.epsilons)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"gateway": ("-", "o"), "smartnoise": ("--", "s")}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(png_dir / name, dpi=110)
        plt.close(fig)
        out[name] = name

    from bench.compare import FAMILIES

    for fam in _families(res):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for i, q in enumerate(_family_queries(res, fam)):
            for s in res.systems:
                ys = [res.error(s, q.key, e) for e in eps]
                pts = [(e, y) for e, y in zip(eps, ys, strict=True)
                       if y is not None and y > 0 and math.isfinite(y)]
                if not pts:
                    continue
                ls, mk = styles[s]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, marker=mk,
                        color=colors[i % len(colors)], label=f"{q.key} ({SYSTEM_NAMES[s]})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(eps, [eps_label(e) for e in eps])
        ax.set_xlabel("total ε per query")
        ax.set_ylabel("median relative error")
        ax.set_title(f"{FAMILIES[fam]} (solid: gateway, dashed: SmartNoise)", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, f"error_{fam}.png")

    sel = [q for q in res.queries if q.selection]
    if sel:
        n = len(sel)
        cols = min(n, 2)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols / 1.5, 3.4 * rows),
                                 squeeze=False)
        for ax, q in zip(axes.flat, sel, strict=False):
            for s in res.systems:
                ys = [res.run(s, q.key, e).median_released for e in eps]
                ls, mk = styles[s]
                ax.plot(eps, [y if y is not None else float("nan") for y in ys], ls,
                        marker=mk, label=SYSTEM_NAMES[s])
            ax.axhline(len(res.info[q.key].truth), color="grey", lw=1, ls=":",
                       label="groups in the data")
            ax.set_xscale("log")
            if len(res.info[q.key].truth) > 100:
                ax.set_yscale("symlog", linthresh=10)
            ax.set_ylim(bottom=0)
            ax.set_xticks(eps, [eps_label(e) for e in eps])
            ax.set_title(q.key, fontsize=9)
            ax.set_xlabel("total ε per query")
            ax.set_ylabel("released groups")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        save(fig, "released_groups.png")

    he = _headline_eps(res)
    ngram = [q for q in res.queries if q.table == "ngrams" and q.grouped]
    if ngram:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for i, q in enumerate(ngram):
            truth = res.info[q.key].truth
            sizes = {k: v for k, v in truth.items() if v}
            if not sizes:
                continue
            edges = np.geomspace(max(1.0, min(sizes.values())), max(sizes.values()) * 1.0001, 25)
            mids = np.sqrt(edges[:-1] * edges[1:])
            for s in res.systems:
                r = res.run(s, q.key, he)
                if r is None or not r.released:
                    continue
                nrep = len(r.released)
                frac = []
                for lo, hi in itertools.pairwise(edges):
                    ks = [k for k, v in sizes.items() if lo <= v < hi]
                    frac.append(np.mean([r.released_keys.get(k, 0) / nrep for k in ks])
                                if ks else np.nan)
                ls, mk = styles[s]
                ax.plot(mids, frac, ls, marker=mk, ms=3, color=colors[i % len(colors)],
                        label=f"{q.key} ({SYSTEM_NAMES[s]})")
        ax.set_xscale("log")
        ax.set_xlabel("exact value of the group (users, or rows = users for COUNT(*))")
        ax.set_ylabel("share of repetitions released")
        ax.set_title(f"n-grams, ~100 groups per user: which groups come out (ε={eps_label(he)}, "
                     f"δ={res.cfg.delta:g})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "ngram_released.png")

    fig, ax = plt.subplots(figsize=(6.4, 0.42 * len(res.queries) + 1.4))
    names = [q.key for q in res.queries]
    series = [(SYSTEM_NAMES[s], [res.run(s, q.key, he).median_ms for q in res.queries])
              for s in res.systems]
    series.append((SYSTEM_NAMES["exact"], [res.info[q.key].exact_ms for q in res.queries]))
    h = 0.8 / len(series)
    ys = np.arange(len(names))
    for j, (label, vals) in enumerate(series):
        ax.barh(ys + j * h, [v if v else float("nan") for v in vals], height=h, label=label)
    ax.set_yticks(ys + h * (len(series) - 1) / 2, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"median ms per query (ε={eps_label(he)})")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, "time.png")
    return out


# --------------------------------------------------------------------------- markdown


def markdown(res: Results, pngs: dict[str, str], png_rel: str) -> str:
    from bench.compare import (
        FAMILIES,
        GATEWAY_AUTO_BOUNDS,
        HEAVY_REPS_DIVISOR,
        NGRAM_GROUPS_PER_UNIT,
        NGRAM_PER_USER,
        NGRAM_ROWS_PER_UNIT,
        NGRAM_TOP,
        NGRAM_ZIPF,
    )

    cfg, inp, env = res.cfg, res.inputs, res.env
    sn = _has_sn(res)
    eps = cfg.epsilons
    he = _headline_eps(res)
    heavy_reps = max(3, cfg.reps // HEAVY_REPS_DIVISOR)

    def img(name: str, alt: str) -> str:
        return f"![{alt}]({png_rel}/{name})" if name in pngs else \
            "_(plot not drawn: matplotlib is not installed)_"

    md: list[str] = []
    add = md.append
    add("# Accuracy: the gateway against SmartNoise SQL\n")
    add(f"_Written by `bench/compare.py` (`make compare`) on {env['date']}. Every number and "
        "plot on this page comes from that one run; rerun it rather than editing this file._\n")

    # ---------------------------------------------------------------- headline
    if sn:
        k = key_figures(res)
        add("## Headline\n")
        add(f"Same data, same SQL, same total ε per query, same contribution bounds and the same "
            f"δ = {cfg.delta:g} for dropping rare groups. The figure of merit is, per query and "
            f"ε, the gateway's median relative error divided by SmartNoise's (below 1: the "
            f"gateway is more accurate).\n")
        add(f"* **Median over queries of (gateway median rel. error / SmartNoise median rel. "
            f"error): {ratio(k['per_eps'].get(he))} at ε = {eps_label(he)}**; "
            + ", ".join(f"{ratio(v)} at ε = {eps_label(e)}" for e, v in k["per_eps"].items()
                        if e != he)
            + f"; {ratio(k['overall'])} over all {len(res.queries)} queries × {len(eps)} "
            f"values of ε. Without the {k['blank']} of those {k['cells']} cells where neither "
            f"system released the median group (both errors 100%, a ratio of 1 that says "
            f"nothing): {ratio(k['informative'])}.")
        fam_rows = []
        for fam in _families(res):
            qs = _family_queries(res, fam)
            ri = k["per_family_informative"][fam]
            verdict = ("–" if ri is None else "gateway more accurate" if ri < 0.9 else
                       "SmartNoise more accurate" if ri > 1 / 0.9 else "within 10%")
            fam_rows.append([FAMILIES[fam], str(len(qs)), ratio(k["per_family"][fam]),
                             f"{ratio(ri)} ({verdict})", str(k["per_family_blank"][fam]),
                             pct(_family_error(res, "gateway", fam, he)),
                             pct(_family_error(res, "smartnoise", fam, he))])
        add("")
        add(_table(["family", "queries", "error ratio gateway / SmartNoise (median over "
                    "queries and ε)", "the same without blank cells",
                    "blank cells (both 100%)", f"gateway error at ε = {eps_label(he)}",
                    f"SmartNoise error at ε = {eps_label(he)}"], fam_rows))
        add("")
        sel = [q for q in res.queries if q.selection]
        if sel:
            parts = []
            for q in sel:
                g = res.run("gateway", q.key, he)
                s = res.run("smartnoise", q.key, he)
                parts.append(f"`{q.key}` {num(g.median_released if g else None)} vs "
                             f"{num(s.median_released if s else None)} of "
                             f"{len(res.info[q.key].truth):,}")
            add(f"* Released groups under partition selection at ε = {eps_label(he)}, δ = "
                f"{cfg.delta:g} (gateway vs SmartNoise, of the groups in the data): "
                + "; ".join(parts) + ".")
        tq = [q for q in res.queries if not q.heavy]
        g_ms = median([res.run("gateway", q.key, he).median_ms for q in tq])
        s_ms = median([res.run("smartnoise", q.key, he).median_ms for q in tq])
        x_ms = median([res.info[q.key].exact_ms for q in tq])
        add(f"* Time per query (median over the {len(tq)} queries on `visits`, "
            f"ε = {eps_label(he)}): gateway {ms(g_ms)} ms, SmartNoise {ms(s_ms)} ms, exact "
            f"DuckDB {ms(x_ms)} ms.\n")
    else:
        add("_SmartNoise SQL was not installed for this run (`pip install -e '.[compare]'`): "
            "only the gateway and exact DuckDB are shown._\n")

    # ---------------------------------------------------------------- setup
    add("## Setup\n")
    dirty = " plus uncommitted changes under `gateway/`" if env["dirty"] == "yes" else ""
    add(f"* **Data.** `visits`: {inp.visits_rows:,} rows of {inp.visits_users:,} users "
        f"(`gateway.cli.sample_data`: skewed rows per user, Zipf countries, long-tailed spend). "
        f"`visits_private_keys`: the same rows, declared without public key lists (so GROUP BY "
        f"country needs partition selection on the gateway). `ngrams`: {inp.ngram_rows:,} rows, "
        f"one per distinct (user, n-gram), {inp.ngram_users:,} users with ~{NGRAM_PER_USER} "
        f"n-grams each, {inp.ngram_groups:,} distinct n-grams out of a vocabulary of "
        f"{cfg.ngram_vocab:,} with Zipf popularity (rank r ∝ 1/(r+5)^{NGRAM_ZIPF:g}).")
    add(f"* **Systems.** The gateway in process (`Gateway.query`, commit `{env['commit']}`"
        f"{dirty}); "
        + (f"SmartNoise SQL {env.get('smartnoise')} (OpenDP {env.get('opendp')}) over a "
           f"DuckDB {env['duckdb']} connection holding the same rows; " if sn else "")
        + f"plain DuckDB {env['duckdb']} for the exact answers (no bounding, no noise). "
        f"Python {env['python']}, {env['cpus']} CPUs, load average {env['load']} at start and "
        f"{env.get('load_end', '?')} at the end (other jobs share the machine: calls of the "
        "two systems are interleaved, so both see the same load).")
    add(f"* **Runs.** ε ∈ {{{', '.join(eps_label(e) for e in eps)}}}, δ = {cfg.delta:g}; "
        f"{cfg.reps} repetitions per (query, ε) ({heavy_reps} for the two n-gram queries, which "
        f"have thousands of groups); the whole run took {res.seconds:.0f} s. Every gateway "
        "call uses ε·(1 + i·10⁻⁹), since a repeat at the same ε is the cached answer.")
    auto = ("**on**: every protected table of the gateway policy has `max_rows_per_unit: "
            f"{{auto: true, max: {cfg.auto_max}}}` (SmartNoise keeps the fixed bound)"
            if cfg.auto_bounds else
            f"off (`GATEWAY_AUTO_BOUNDS = {GATEWAY_AUTO_BOUNDS}` in the script, or "
            "`--gateway-auto-bounds`)")
    add(f"* **Gateway switches.** Automatic contribution bounds: {auto}. Extra table options: "
        + (", ".join(f"`{k}: {v}`" for k, v in cfg.table_options.items())
           if cfg.table_options else "none (`--gateway-table-option KEY=YAML`)") + ".\n")

    add("### Queries\n")
    rows = []
    for q in res.queries:
        rows.append([f"`{q.key}`", FAMILIES[q.family], f"`{q.sql}`",
                     f"{len(res.info[q.key].truth):,}"])
    add(_table(["query", "family", "SQL (the same text on all three)", "groups in the data"],
               rows, "lllr"))
    add("")

    add("### Equal total ε\n")
    add("The gateway is asked for ε (and δ) per query and charges exactly that; its reported "
        "charge is shown. SmartNoise's `Privacy(epsilon=e)` is the ε of *each* noisy column "
        "of its rewritten query, so each query here gets `e = ε / k`, where k counts the "
        "mechanisms SmartNoise runs for it (`PrivateReader._get_mechanism_costs`), including "
        "the hidden `keycount` = COUNT(DISTINCT user) that it noises and thresholds to drop "
        "rare groups. Its own odometer (`get_privacy_cost`) then reports k·e = ε. "
        "GROUP BY queries run with `censor_dims: true` (SmartNoise's default, and its only safe "
        "choice when keys come from the data); queries without GROUP BY with `censor_dims: "
        "false`, which spares them the keycount.\n")
    rows = []
    for q in res.queries:
        g = res.run("gateway", q.key, he)
        info = res.info[q.key]
        row = [f"`{q.key}`", _spent(g.spent if g else None)]
        if sn:
            s = res.run("smartnoise", q.key, he)
            k_ = len(info.sn_mechanisms)
            row += [", ".join(f"`{m}`" for m in info.sn_mechanisms) or "–", str(k_) if k_ else "–",
                    num(he / k_) if k_ else "–", _spent(s.spent if s else None)]
        rows.append(row)
    hdr = ["query", f"gateway charge at ε = {eps_label(he)} (ε, δ)"]
    if sn:
        hdr += ["SmartNoise noisy columns", "k", "ε per column", "SmartNoise odometer (ε, δ)"]
    add(_table(hdr, rows, "ll" + "lrrl"[: len(hdr) - 2]))
    add("")
    if sn:
        add(f"SmartNoise's odometer adds a slack of δ/2 (its `tol`) to every report, so a "
            f"thresholded query at δ = {cfg.delta:g} is reported as ≈ {1.5 * cfg.delta:.2g}; the "
            "threshold itself uses δ. The gateway spends δ only where it selects partitions "
            "(keys without a public list); with public keys it releases every key, empty ones "
            "included, at δ = 0.\n")

    add("### Same contribution bounds\n")
    add("SmartNoise's metadata is generated from the gateway policy (`metadata_from_policy` "
        "in `bench/compare_smartnoise.py`): `max_ids` = `max_rows_per_unit` with "
        "`sample_max_ids: true` (a uniform sample of that many rows per user), the privacy "
        "unit as `private_id`, the same numeric `bounds` as `lower`/`upper` (rows clamped), "
        "`clamp_counts: true` (negative noisy counts shown as 0: post-processing, in "
        "SmartNoise's favour), "
        "`use_dpsu: false`. SmartNoise has no separate bound on the groups a user touches: a "
        "user's `max_ids` rows may fall in `max_ids` groups, and its threshold assumes so.\n")
    rows = []
    for name, t in inp.policy["tables"].items():
        if t.get("public") or not t.get("privacy_unit"):
            continue
        st = inp.sn_policy["tables"][name]
        bounds = ", ".join(f"{c} [{b['bounds'][0]}, {b['bounds'][1]}]"
                           for c, b in t["columns"].items()
                           if b.get("bounds") and b["type"] in ("int", "float"))
        rows.append([f"`{name}`", _mr(t.get("max_rows_per_unit", 1)),
                     str(t.get("max_groups_per_unit", 1)), _mr(st.get("max_rows_per_unit", 1)),
                     bounds or "–"])
    add(_table(["table", "gateway max_rows_per_unit", "gateway max_groups_per_unit",
                "SmartNoise max_ids", "bounds (both)"], rows, "lrrrl"))
    add("")
    add(f"The `ngrams` table gets `max_rows_per_unit: {NGRAM_ROWS_PER_UNIT}` and "
        f"`max_groups_per_unit: {NGRAM_GROUPS_PER_UNIT}` (each user has ~{NGRAM_PER_USER} "
        "n-grams, one row each); the visits tables keep `policies/web.yaml`'s bounds.\n")

    add("### What the error is\n")
    add("For each group of the exact answer (plain DuckDB on the raw rows, so the error "
        "includes the bias of contribution bounding as well as the noise) with a non-zero "
        "value: |noisy − exact| / |exact|. A group the system did not release counts as 100%. "
        "Per query and ε: the median over groups of each group's median over the repetitions. "
        f"For the two n-gram queries, thousands of groups long, the error is taken over their "
        f"{NGRAM_TOP} largest groups (the head an analyst reads; neither system can release "
        "the tail), and their released groups and released mass are shown over all groups. "
        "Empty public groups (countries in `countries.csv` with no visits, which the gateway "
        "releases with noise) have no relative error and are left out.\n")

    # ---------------------------------------------------------------- errors
    add("## Error against ε\n")
    for fam in _families(res):
        add(f"### {FAMILIES[fam]}\n")
        add(img(f"error_{fam}.png", f"median relative error vs epsilon, {FAMILIES[fam]}"))
        add("")
        hdr = ["query"] + [f"ε = {eps_label(e)}" for e in eps]
        rows = []
        for q in _family_queries(res, fam):
            cells = []
            for e in eps:
                g = pct(res.error("gateway", q.key, e))
                if sn:
                    s = pct(res.error("smartnoise", q.key, e))
                    cells.append(f"{g} / {s} (×{ratio(res.ratio(q.key, e))})")
                else:
                    cells.append(g)
            rows.append([f"`{q.key}`", *cells])
        add(_table(hdr, rows))
        add("")
        if sn:
            add("Cells: gateway / SmartNoise median relative error (their ratio).\n")

    # ---------------------------------------------------------------- released groups
    add("## Released groups\n")
    add("Groups of the data released (median over the repetitions). The gateway releases every "
        "public key without selection (`count_*`, `*_device`), and selects keys by DP "
        "partition selection where there is no public list (`ps_*`, `users_ngram`), with the "
        "mechanism the running version chooses. SmartNoise always thresholds its noisy "
        "keycount at τ = m·(1 − ln(2δ/m)/e) users, with m = `max_ids` and e its ε per column "
        "(τ shown).\n")
    hdr = ["query", "groups in the data"] + [f"ε = {eps_label(e)}" for e in eps]
    rows = []
    for q in res.queries:
        if not q.grouped:
            continue
        cells = []
        for e in eps:
            g = res.run("gateway", q.key, e)
            cell = num(g.median_released if g else None)
            if sn:
                s = res.run("smartnoise", q.key, e)
                tau = _sn_tau(res, q, e)
                cell += f" / {num(s.median_released if s else None)}"
                if tau is not None:
                    cell += f" (τ {tau:,.0f})"
            cells.append(cell)
        rows.append([f"`{q.key}`", f"{len(res.info[q.key].truth):,}", *cells])
    add(_table(hdr, rows))
    add("")
    if sn:
        add("Cells: gateway / SmartNoise (SmartNoise's threshold τ in users).\n")
    add(img("released_groups.png", "released groups vs epsilon for partition-selection queries"))
    add("")

    ngram = [q for q in res.queries if q.table == "ngrams" and q.grouped]
    if ngram:
        add(f"### n-grams: each user touches ~{NGRAM_PER_USER} groups (ε = {eps_label(he)}, "
            f"δ = {cfg.delta:g})\n")
        add(f"The gateway policy allows {NGRAM_GROUPS_PER_UNIT} groups per user "
            f"(`max_groups_per_unit`); SmartNoise's `max_ids` is {NGRAM_ROWS_PER_UNIT}. "
            "\"Half-release size\": the smallest exact group value (users) among the groups "
            "released in at least half of the repetitions. \"Mass\": the share of the exact "
            "total that falls in released groups.\n")
        rows = []
        for q in ngram:
            truth = res.info[q.key].truth
            for s in res.systems:
                r = res.run(s, q.key, he)
                if r is None:
                    continue
                rows.append([f"`{q.key}`", SYSTEM_NAMES[s], f"{len(truth):,}",
                             num(r.median_released), _half_release(r, truth),
                             pct(r.median_coverage), pct(r.median_error),
                             ms(r.median_ms)])
        add(_table(["query", "system", "groups in the data", "released", "half-release size",
                    "mass released", "median rel. error", "ms"], rows, "llrrrrrr"))
        add("")
        add(img("ngram_released.png", "share of repetitions in which a group is released, "
                                      "by group size"))
        add("")

    # ---------------------------------------------------------------- time
    add("## Time per query\n")
    add(f"Median milliseconds per call at ε = {eps_label(he)}, end to end: the gateway's "
        "`Gateway.query` (planning, ledger charge, engine, noise, post-processing, audit), "
        "SmartNoise's `PrivateReader.execute` (parsing, rewriting, noise-scale search, engine, "
        f"per-row noise and post-processing), and the query on DuckDB (median of "
        f"{cfg.exact_reps} runs). All three run on DuckDB with the rows in memory.\n")
    rows = []
    for q in res.queries:
        x = res.info[q.key].exact_ms
        row = [f"`{q.key}`"]
        for s in res.systems:
            r = res.run(s, q.key, he)
            row.append(ms(r.median_ms if r else None))
        row.append(ms(x))
        for s in res.systems:
            r = res.run(s, q.key, he)
            row.append(f"{r.median_ms / x:.1f}×" if r and r.median_ms and x else "–")
        rows.append(row)
    hdr = (["query"] + [f"{SYSTEM_NAMES[s]} ms" for s in res.systems] + ["exact DuckDB ms"]
           + [f"{SYSTEM_NAMES[s]} / exact" for s in res.systems])
    add(_table(hdr, rows))
    add("")
    add(img("time.png", "median milliseconds per query"))
    add("")

    # ---------------------------------------------------------------- SmartNoise notes
    if sn:
        add("## Notes on SmartNoise's accounting\n")
        ex = next((q for q in res.queries if q.key == "avg_duration_device"), None)
        add("* **ε is per column, not per query.** `Privacy(epsilon=…)` is documented as \"the "
            "epsilon value for each statistic\"; every noisy column of the rewritten subquery "
            "gets a mechanism with that ε and the odometer composes them. "
            + (f"`{ex.key}` runs {len(res.info[ex.key].sn_mechanisms)} mechanisms "
               f"({', '.join(res.info[ex.key].sn_mechanisms)}): left at the default it would "
               f"cost {len(res.info[ex.key].sn_mechanisms)}·ε. " if ex else "")
            + "Hence ε/k per column here.")
        add("* **The keycount is paid for even when it is not shown.** With `censor_dims` every "
            "query carries a noisy COUNT(DISTINCT user) used only to censor groups; it costs "
            "as much as a released column. Queries without GROUP BY ran with `censor_dims: "
            "false` to spare it; `COUNT(DISTINCT user_id)` by group *is* the keycount, so "
            "those queries cost one column.")
        ng = next((q for q in res.queries if q.key == "users_ngram"), None)
        add("* **One bound for rows and groups.** `max_ids` bounds rows per user and, through "
            "them, groups per user: counts get noise of scale max_ids/e and the threshold grows "
            "with max_ids. The gateway keeps the two apart (M rows in at most L0 groups) and "
            "scales a user's contributions to their total M."
            + (f" At ε = {eps_label(he)} SmartNoise's τ for `{ng.key}` is "
               f"{_sn_tau(res, ng, he):,.0f} users." if ng and _sn_tau(res, ng, he) else ""))
        add("* **`COUNT(DISTINCT user)` without GROUP BY** is noised with scale max_ids/e in "
            "SmartNoise (the count's sensitivity times `max_ids`), although one user changes it "
            "by at most 1; the gateway uses sensitivity 1.")
        add("* **Sums** are calibrated to max(|lower|, |upper|)·max_ids and use the sampled rows; "
            "**AVG** is a noisy SUM over a noisy COUNT (two columns, plus the keycount when "
            "grouped), where the gateway sums values centred on the middle of the bounds.")
        add("* **δ.** Only the keycount threshold uses δ; the odometer reports δ·1.5 because it "
            "adds δ/2 of slack (`OdometerHeterogeneous.tol`). `use_dpsu: true` would run DP set "
            "union with ε = 1 hard-coded and not charged by the odometer; it is off here.")
        add("* **Engine.** SmartNoise has no DuckDB reader; its PostgreSQL reader is a thin "
            "DB-API pipe, used here over DuckDB. Its reservoir sample `ROW_NUMBER() OVER "
            "(PARTITION BY user ORDER BY RANDOM())` is refused by DuckDB (volatile window "
            "order), so `random()` is drawn one level down and ordered by: the same uniform "
            "sample.\n")

    fails = _failures(res)
    if fails:
        add("## Failures\n")
        add("\n".join(f"* {f}" for f in fails))
        add("")

    add("## Reproducing\n")
    add("```sh\nmake compare      # pip install -e '.[compare]', then bench/compare.py "
        "(writes this page)\n"
        ".venv/bin/python bench/compare.py --help   # --rows, --reps, --eps, --queries, "
        "--gateway-auto-bounds, ...\n```\n")
    add(f"The run above: `bench/compare.py --rows {cfg.rows} --reps {cfg.reps} --eps "
        f"{','.join(eps_label(e) for e in eps)}"
        + (" --gateway-auto-bounds" if cfg.auto_bounds else "") + "`. Data is generated "
        "once into `bench/.data/<rows>/` (git-ignored). `smartnoise-sql` 1.0.10 needs "
        "pandas < 3, so the `compare` extra moves pandas back to 2.x in the environment it is "
        "installed in.")
    return "\n".join(md).rstrip() + "\n"


def _spent(s: tuple[float, float] | None) -> str:
    if s is None:
        return "–"
    return f"({s[0]:.4g}, {s[1]:.3g})"


def _mr(m: Any) -> str:
    return f"auto, max {m['max']}" if isinstance(m, dict) else str(m)


def _half_release(r: Any, truth: dict[Any, float | None]) -> str:
    n = len(r.released)
    if not n:
        return "–"
    sizes = [truth[k] for k, c in r.released_keys.items()
             if k in truth and truth[k] and c >= n / 2]
    return f"{min(sizes):,.0f}" if sizes else "none released"


def write_report(res: Results, out: Path, png_dir: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    pngs = plots(res, png_dir)
    try:
        rel = png_dir.resolve().relative_to(out.parent.resolve()).as_posix()
    except ValueError:
        rel = png_dir.resolve().as_posix()
    out.write_text(markdown(res, pngs, rel))

