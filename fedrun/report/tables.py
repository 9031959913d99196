"""fedrun-report's tables: markdown, CSV and booktabs LaTeX (:func:`to_latex`, pandas' Styler); final/best
per setting, rounds to target (k/n seeds, speed-up over FedAvg), the paper's table (a row per setting
and target, a column per method), constant columns as a caption line, published numbers beside ours.

Every table groups runs by their setting (the hidden ``_setting`` column :mod:`fedrun.report.runs` gives
each run: its resolved config minus the seed), in the run table's numeric order.

Units: accuracies in percent (the run table holds them so), losses as they are; every std is the
sample standard deviation over seeds (ddof=1).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd

SEED_KEYS = {"seed"}


def higher_is_better(metric: str) -> bool:
    """Accuracies grow (best = maximum), losses shrink (best = minimum)."""
    return "acc" in metric


def normalize_target(target: float, metric: str = "test_acc") -> float:
    """Target accuracies are fractions in [0, 1]; 81.4 (a percentage) is read as 0.814. Loss targets stay."""
    if not higher_is_better(metric):
        return float(target)
    return float(target) / 100.0 if float(target) > 1.0 else float(target)


def target_label(target: float, metric: str = "test_acc") -> str:
    if not higher_is_better(metric):
        return f"{float(target):g}"
    return f"{100 * normalize_target(target):g}"


def value_columns(metric: str) -> tuple[str, str]:
    """(final, best) column names: ``final_acc``/``best_acc`` (percent) or ``final_loss``/``best_loss``."""
    return ("final_acc", "best_acc") if higher_is_better(metric) else ("final_loss", "best_loss")


# ---------------------------------------------------------------------------------------------
# Tables


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.4g}"
    return str(value)


UNITS = {"final_acc": "final_acc (%)", "best_acc": "best_acc (%)", "target_acc": "target_acc (%)"}


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' ``to_markdown``); NaN shows as an empty cell, accuracy columns say (%)."""
    cells = df.astype(object).map(lambda v: _fmt(v).replace("|", "\\|"))
    return cells.rename(columns=UNITS).to_markdown(index=False, tablefmt="github", disable_numparse=True) + "\n"


SETTING_COLUMNS = ("method", "setting")  # display labels of each row (fedrun.report.settings.labels_of)
HIDDEN = ("_setting", "_problem", "_fedavg")  # a setting's identity, its problem's, whether it is FedAvg


def _settings(table: pd.DataFrame) -> list[tuple[Any, pd.DataFrame]]:
    """The rows of each setting (its resolved config minus the seed), in the table's (numeric) order."""
    if "_setting" not in table.columns:
        return [((), table)] if len(table) else []
    return [(sid, g) for sid, g in table.groupby("_setting", sort=False)]


def _head(g: pd.DataFrame, keys: Sequence[str]) -> dict[str, Any]:
    """The setting's raw key columns (for CSV and joins), its labels and identity, from its first row."""
    cols = [k for k in keys if k not in SEED_KEYS] + [c for c in (*SETTING_COLUMNS, *HIDDEN) if c in g.columns]
    return {c: g[c].iloc[0] for c in cols if c in g.columns}


def target_table(table: pd.DataFrame, keys: Sequence[str], targets: Sequence[float], algo_key: str = "algo",
                 metric: str = "test_acc") -> pd.DataFrame:
    """Rounds and communication to each target per setting, as the FedDyn paper's table.

    Only finished and diverged runs count (unfinished, failed and broken ones are left out). Per
    setting and target: ``runs`` (n) and ``reached`` (k, the seeds that reached it); ``rounds`` and
    ``rounds_std`` are the mean and sample std (ddof=1) over those k seeds, ``comm_fedavg_rounds``
    their mean communication (FedAvg rounds: a SCAFFOLD round counts 2). ``speedup`` = FedAvg's
    rounds / this method's, FedAvg in the same setting but the algorithm; when FedAvg never reached
    the target in its ``max_rounds`` R, ``speedup_above`` = R / rounds (the speed-up is more).
    """
    ok = table[table["status"].isin(["finished", "diverged"])]  # a diverged run counts as never reaching what it had not
    rows = []
    for t in targets:
        label = target_label(t, metric)
        rcol, ccol = f"rounds_to_{label}", f"comm_to_{label}"
        for _, g in _settings(ok):
            hit = g[rcol].dropna()
            rows.append({
                **_head(g, keys),
                **({"target_acc": 100 * t} if higher_is_better(metric) else {"target_loss": t}),
                "runs": len(g),
                "reached": len(hit),
                "rounds": float(hit.mean()) if len(hit) else math.nan,
                "rounds_std": float(hit.std(ddof=1)) if len(hit) > 1 else math.nan,  # sample std over the seeds that reached it
                "comm_fedavg_rounds": float(g.loc[hit.index, ccol].mean()) if len(hit) else math.nan,
                "max_rounds": float(g["rounds_done"].max()) if len(g) else math.nan,
            })
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["speedup"], out["speedup_above"] = math.nan, math.nan
    if "_fedavg" in out.columns:
        target_col = "target_acc" if "target_acc" in out.columns else "target_loss"
        for idx, row in out.iterrows():
            base = out[out["_fedavg"].astype(bool) & (out["_problem"] == row["_problem"]) & (out[target_col] == row[target_col])]
            if len(base) != 1 or not row["reached"]:
                continue
            if base["reached"].iloc[0]:
                out.loc[idx, "speedup"] = base["rounds"].iloc[0] / row["rounds"]
            else:
                out.loc[idx, "speedup_above"] = base["max_rounds"].iloc[0] / row["rounds"]
    return out


def _count(value: float) -> str:
    """A number of rounds: ``41``, or ``40.5`` for a mean between two."""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def target_cell(row: pd.Series, published: Sequence[str] = ()) -> str:
    """``41 ± 3 (2.4×)``, ``25 (2/3 seeds) (1.9×)``, ``not in 100``, ``12 (>8.3×) [comm. 24]``."""
    if not row["reached"]:
        text = f"not in {_count(row['max_rounds'])}"
    else:
        text = _count(row["rounds"]) + ("" if math.isnan(row["rounds_std"]) else f" ± {_count(round(row['rounds_std'], 1))}")
        if row["reached"] < row["runs"]:
            text += f" ({int(row['reached'])}/{int(row['runs'])} seeds)"
        if not math.isnan(row.get("speedup", math.nan)):
            text += f" ({row['speedup']:.2g}×)"
        elif not math.isnan(row.get("speedup_above", math.nan)):
            text += f" (>{row['speedup_above']:.2g}×)"
        if not math.isnan(row["comm_fedavg_rounds"]) and abs(row["comm_fedavg_rounds"] - row["rounds"]) > 1e-9:
            text += f" [comm. {_count(row['comm_fedavg_rounds'])}]"
    extra = [f"{c.split('_')[0]} {_fmt(row[c])}" for c in published if _fmt(row[c]) not in ("", "nan")]
    return text + (f" [{'; '.join(extra)}]" if extra else "")


def paper_table(targets: pd.DataFrame, algo_key: str = "algo") -> pd.DataFrame:
    """The target table as in the paper: a row per setting and target (only those that exist), a
    column per method (display labels, FedAvg first, numeric order), cells :func:`target_cell`."""
    if targets.empty or "method" not in targets.columns:
        return pd.DataFrame()
    target_col = "target_acc" if "target_acc" in targets.columns else "target_loss"
    published = [c for c in targets.columns if c.startswith(("published", "reference"))]
    methods = list(dict.fromkeys(targets["method"]))
    fedavg = [m for m, f in zip(targets["method"], targets.get("_fedavg", [False] * len(targets))) if f]
    methods = list(dict.fromkeys(fedavg + methods))
    rows: dict[tuple, dict[str, str]] = {}
    for _, row in targets.iterrows():
        rows.setdefault((row.get("setting", ""), row[target_col]), {})[row["method"]] = target_cell(row, published)
    order = list(dict.fromkeys(targets.get("setting", pd.Series([""] * len(targets)))))
    name = "target (%)" if target_col == "target_acc" else "target loss"
    out = [{"setting": k[0], name: _fmt(k[1]), **{m: cells.get(m, "") for m in methods}}
           for k, cells in sorted(rows.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1]))]
    frame = pd.DataFrame(out)
    return frame.drop(columns=["setting"]) if frame["setting"].nunique() <= 1 else frame


TARGET_VALUE_COLUMNS = {"runs", "reached", "rounds", "rounds_std", "comm_fedavg_rounds", "max_rounds", "speedup", "speedup_above"}


def constant_caption(df: pd.DataFrame, keep: Sequence[str] = ()) -> tuple[pd.DataFrame, str]:
    """Columns with one value in every row (and more than one row) move out of a paper table into its
    caption line: (the table without them, ``"setting: Dir(0.3); runs: 3"``)."""
    if len(df) < 2:
        return df, ""
    constant = [c for c in df.columns if c not in keep and df[c].astype(str).nunique() == 1]
    caption = "; ".join(f"{c}: {_fmt(df[c].iloc[0])}" for c in constant if _fmt(df[c].iloc[0]) and c != "runs")  # the seeds per row: in the report's caption
    return df.drop(columns=constant), caption


LATEX_SYMBOLS = {"±": r"$\pm$", "×": r"$\times$", "α": r"$\alpha$", "μ": r"$\mu$", "σ": r"$\sigma$", "η": r"$\eta$",
                 "β₁": r"$\beta_1$", "β₂": r"$\beta_2$", "β": r"$\beta$", "τ": r"$\tau$", "λ": r"$\lambda$", "ρ": r"$\rho$", "≥": r"$\geq$"}


def to_latex(df: pd.DataFrame, caption: str = "") -> str:
    """A booktabs LaTeX table (pandas' ``Styler.to_latex``): text escaped, Greek letters and ± as math."""
    cells = df.astype(object).map(_fmt)
    cells.columns = [_fmt(c) for c in cells.columns]
    styler = cells.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    text = styler.to_latex(hrules=True, column_format="l" * len(cells.columns), caption=caption or None, position_float="centering")
    for symbol in sorted(LATEX_SYMBOLS, key=len, reverse=True):
        text = text.replace(symbol, LATEX_SYMBOLS[symbol])
    return text


def write_table(df: pd.DataFrame, path_stem: Any, caption: str = "", title: str = "") -> list[str]:
    """``<stem>.md`` (title, caption line, markdown), ``<stem>.csv`` and ``<stem>.tex``; returns the names."""
    from pathlib import Path

    stem = Path(path_stem)
    lines = [t for t in (title, caption) if t]
    stem.with_suffix(".md").write_text("".join(f"{t}\n\n" for t in lines) + to_markdown(df))
    df.to_csv(stem.with_suffix(".csv"), index=False)
    stem.with_suffix(".tex").write_text(to_latex(df, " ".join(lines)))
    return [stem.with_suffix(s).name for s in (".md", ".csv", ".tex")]


def add_published(targets: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Join published numbers (a CSV with key columns, ``target_acc`` and value columns) onto ``targets``.

    Rows match on ``target_acc`` and every key column the two tables share; a published column
    that matches nothing stays empty.
    """
    if targets.empty or published.empty:
        return targets
    value_cols = [c for c in published.columns if c.startswith("published") or c.startswith("reference")]
    keys = [c for c in published.columns if c in targets.columns and c not in value_cols]
    left, right = targets.copy(), published.copy()
    for k in keys:
        left[f"_k_{k}"] = left[k].map(_key)
        right[f"_k_{k}"] = right[k].map(_key)
    joined = left.merge(right[[f"_k_{k}" for k in keys] + value_cols], on=[f"_k_{k}" for k in keys], how="left")
    return joined.drop(columns=[f"_k_{k}" for k in keys])


def _shared_keys(frame: pd.DataFrame, published: pd.DataFrame, runs: Sequence[Any]) -> pd.DataFrame:
    """Add the published CSV's key columns that ``frame`` lacks (a key all runs share, data=cifar10,
    is not a column) from the runs' configs, so that :func:`add_published` can match on them."""
    frame = frame.copy()
    for k in published.columns:
        if k in frame.columns or k.startswith(("published", "reference")):
            continue
        values = {_key(r.config.get(k)) for r in runs if r.config}  # broken runs have no config
        frame[k] = values.pop() if len(values) == 1 else None  # missing or mixed: matches nothing
    return frame


def accuracy_table(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Final and best test accuracy per setting (its config minus the seed), in percent.

    Means over the setting's finished runs (``finished`` counts them, ``runs`` counts all); ``final_acc_std``
    is the sample standard deviation (ddof=1) over those runs (empty for one run).
    """
    rows = []
    for _, g in _settings(table):
        done = g[g["status"] == "finished"]
        rows.append({
            **_head(g, keys),
            "runs": len(g),
            "finished": len(done),
            "final_acc": float(done["final_acc"].mean()) if len(done) else math.nan,  # the run table holds percent
            "final_acc_std": float(done["final_acc"].std(ddof=1)) if len(done) > 1 else math.nan,  # sample std
            "best_acc": float(done["best_acc"].mean()) if len(done) else math.nan,
        })
    return pd.DataFrame(rows)


def _key(value: Any) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


EXTRA_METRICS = ("client_acc_worst10", "client_acc_mean", "val_acc")  # in the final table when the runs have them


def final_table(table: pd.DataFrame, keys: Sequence[str], metric: str = "test_acc") -> pd.DataFrame:
    """Final and best value per setting (its config minus the seed), mean and sample std (ddof=1)
    over its finished and diverged runs, in the table's numeric order; the final per-client and
    validation accuracies (``final_client_acc_worst10`` ...) too when the runs have them."""
    final_col, best_col = value_columns(metric)
    ok = table[table["status"].isin(["finished", "diverged"])]
    extra = [f"final_{m}" for m in EXTRA_METRICS if f"final_{m}" in ok.columns and ok[f"final_{m}"].notna().any() and m != metric]
    rows = []
    for _, g in _settings(ok):
        row = {**_head(g, keys), "runs": len(g)}
        for col in (final_col, best_col, *extra):
            row[f"{col}_mean"] = float(g[col].mean())
            row[f"{col}_std"] = float(g[col].std(ddof=1)) if len(g) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def mean_std(mean: float, std: float, digits: int) -> str:
    """``81.40 ± 1.20`` (``81.40`` for one run)."""
    if math.isnan(mean):
        return ""
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def final_display(final: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """The final table for a paper: display labels, ``81.40 ± 1.20`` cells, no raw key columns."""
    digits = 2 if higher_is_better(metric) else 4
    out = pd.DataFrame({c: final[c] for c in SETTING_COLUMNS if c in final.columns and final[c].astype(str).str.len().any()})
    out["runs"] = final["runs"]
    for col in [c[: -len("_mean")] for c in final.columns if c.endswith("_mean")]:
        out[UNITS.get(col, col + (" (%)" if "acc" in col and col not in UNITS else ""))] = [
            mean_std(m, s, digits) for m, s in zip(final[f"{col}_mean"], final[f"{col}_std"])]
    return out


def final_markdown(final: pd.DataFrame, metric: str = "test_acc", caption: str = "") -> str:
    """``final.md``: cells ``85.20 ± 0.31`` (mean ± sample std over seeds), display labels."""
    if final.empty:
        return "no finished runs\n"
    table, constant = constant_caption(final_display(final, metric), keep=("method",))
    caption = "; ".join(t for t in (caption, constant) if t)
    return (f"Final and best {metric} per setting: mean ± sample std (ddof=1) over the runs (seeds)."
            + (f" {caption}." if caption else "") + "\n\n" + to_markdown(table))
