"""fedrun-report's tables: markdown, final/best per setting, rounds to target, the paper's pivot,
published numbers beside ours.

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


def target_table(table: pd.DataFrame, keys: Sequence[str], targets: Sequence[float], algo_key: str = "algo",
                 metric: str = "test_acc") -> pd.DataFrame:
    """Rounds and communication to each target per setting (mean over seeds), with speed-up over FedAvg.

    Only finished and diverged runs count (unfinished, failed and broken ones are left out). A
    setting reaches a target only if every one of its runs does; otherwise its cells are empty and
    ``reached`` says how many runs did. ``speedup`` = FedAvg's communication / this algorithm's,
    in the setting that differs only in the algorithm.
    """
    setting = [k for k in keys if k not in SEED_KEYS]
    ok = table[table["status"].isin(["finished", "diverged"])]  # a diverged run counts as never reaching what it had not
    rows = []
    for t in targets:
        label = target_label(t, metric)
        rcol, ccol = f"rounds_to_{label}", f"comm_to_{label}"
        groups = ok.groupby(setting, dropna=False, sort=True) if setting else [((), ok)]
        for values, g in groups:
            values = values if isinstance(values, tuple) else (values,)
            all_hit = g[rcol].notna().all() and len(g) > 0
            rows.append({
                **dict(zip(setting, values)),
                **({"target_acc": 100 * t} if higher_is_better(metric) else {"target_loss": t}),
                "runs": len(g),
                "reached": int(g[rcol].notna().sum()),
                "rounds": float(g[rcol].mean()) if all_hit else math.nan,
                "rounds_std": float(g[rcol].std(ddof=1)) if all_hit else math.nan,  # sample std over seeds
                "comm_fedavg_rounds": float(g[ccol].mean()) if all_hit else math.nan,
                "max_rounds": float(g["rounds_done"].max()) if len(g) else math.nan,
            })
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["speedup"] = math.nan
    if algo_key in setting:
        # the same setting but FedAvg: every key except the algorithm and its own hyper-parameters
        others = [k for k in setting if k != algo_key and not k.startswith(algo_key + ".")] + [c for c in ("target_acc", "target_loss") if c in out]
        for idx, row in out.iterrows():
            mask = out[algo_key].astype(str) == "fedavg"
            for k in others:
                mask &= out[k].astype(str) == str(row[k])
            base = out[mask]
            if len(base) == 1 and not math.isnan(row["comm_fedavg_rounds"]) and not math.isnan(base["comm_fedavg_rounds"].iloc[0]):
                out.loc[idx, "speedup"] = base["comm_fedavg_rounds"].iloc[0] / row["comm_fedavg_rounds"]
    return out


def paper_table(targets: pd.DataFrame, algo_key: str = "algo") -> pd.DataFrame:
    """The target table pivoted as in the paper: a row per setting and target, a column per algorithm.

    A cell is the communication (FedAvg rounds) to reach the target, mean over seeds, with the
    speed-up over FedAvg, then any published numbers in brackets; "not in N rounds" if some seed
    never reached it.
    """
    if targets.empty or algo_key not in targets.columns:
        return pd.DataFrame()
    setting = [c for c in targets.columns if c not in TARGET_VALUE_COLUMNS and c != algo_key
               and not c.startswith(algo_key + ".") and not c.startswith(("published", "reference"))]
    published = [c for c in targets.columns if c.startswith(("published", "reference"))]

    def cell(row: pd.Series) -> str:
        if math.isnan(row["comm_fedavg_rounds"]):
            text = f"not in {_fmt(row['max_rounds'])} rounds"
        else:
            text = _fmt(row["comm_fedavg_rounds"])
            if not math.isnan(row["speedup"]):
                text += f" ({row['speedup']:.2g}x)"
        extra = [f"{c.split('_')[0]} {_fmt(row[c])}" for c in published if _fmt(row[c]) not in ("", "nan")]
        return text + (f" [{'; '.join(extra)}]" if extra else "")

    frame = targets.assign(_cell=targets.apply(cell, axis=1))
    keys = [k for k in setting]
    wide = frame.pivot_table(index=keys, columns=algo_key, values="_cell", aggfunc="first", dropna=False) if keys else None
    return wide.reset_index() if wide is not None else pd.DataFrame()


TARGET_VALUE_COLUMNS = {"runs", "reached", "rounds", "rounds_std", "comm_fedavg_rounds", "max_rounds", "speedup"}


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
    """Final and best test accuracy per setting (every varying key but the seed), in percent.

    Means over the setting's finished runs (``finished`` counts them, ``runs`` counts all); ``final_acc_std``
    is the sample standard deviation (ddof=1) over those runs (empty for one run).
    """
    setting = [k for k in keys if k not in SEED_KEYS]
    groups = table.groupby(setting, dropna=False, sort=True) if setting else [((), table)]
    rows = []
    for values, g in groups:
        values = values if isinstance(values, tuple) else (values,)
        done = g[g["status"] == "finished"]
        rows.append({
            **dict(zip(setting, values)),
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


def final_table(table: pd.DataFrame, keys: Sequence[str], metric: str = "test_acc") -> pd.DataFrame:
    """Final and best value per setting (every varying key but the seed), mean and sample std (ddof=1)
    over its finished and diverged runs; rows sorted by setting."""
    setting = [k for k in keys if k not in SEED_KEYS]
    final_col, best_col = value_columns(metric)
    ok = table[table["status"].isin(["finished", "diverged"])]
    groups = ok.groupby(setting, dropna=False, sort=True) if setting and len(ok) else [((), ok)]
    rows = []
    for values, g in groups:
        if not len(g):
            continue
        values = values if isinstance(values, tuple) else (values,)
        row = {**dict(zip(setting, values)), "runs": len(g)}
        for col in (final_col, best_col):
            row[f"{col}_mean"] = float(g[col].mean())
            row[f"{col}_std"] = float(g[col].std(ddof=1)) if len(g) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def final_markdown(final: pd.DataFrame, metric: str = "test_acc") -> str:
    """``final.md``: cells ``85.20 ± 0.31`` (mean ± sample std over seeds)."""
    if final.empty:
        return "no finished runs\n"
    out = final[[c for c in final.columns if not c.endswith(("_mean", "_std"))]].copy()
    digits = 2 if higher_is_better(metric) else 4
    for col in value_columns(metric):
        mean, std = final[f"{col}_mean"], final[f"{col}_std"]
        out[UNITS.get(col, col)] = [f"{m:.{digits}f}" + ("" if math.isnan(s) else f" ± {s:.{digits}f}") for m, s in zip(mean, std)]
    return (f"Final and best {metric} per setting: mean ± sample std (ddof=1) over the runs (seeds).\n\n" + to_markdown(out))
