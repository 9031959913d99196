"""What every fedrun figure shares: one colour and marker per algorithm, short labels, the setting
as a title, integer round ticks, the legend outside the axes, PNG + PDF + SVG.

The per-run plot (:mod:`fedrun.observers.plot`) and the report's curves (:mod:`fedrun.report.figures`) use
these, so FedDyn has the same colour in every figure a paper takes from fedrun.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

# One colour (colour-blind safe, Okabe-Ito first) and one marker per algorithm, fixed across figures.
ALGO_STYLE: dict[str, tuple[str, str, str]] = {  # name -> (label, colour, marker)
    "feddyn": ("FedDyn", "#D55E00", "o"),
    "fedavg": ("FedAvg", "#0072B2", "s"),
    "fedprox": ("FedProx", "#009E73", "^"),
    "scaffold": ("SCAFFOLD", "#CC79A7", "D"),
    "fedadam": ("FedAdam", "#E69F00", "v"),
    "feddc": ("FedDC", "#56B4E9", "P"),
    "fedspeed": ("FedSpeed", "#000000", "X"),
    "fedsmoo": ("FedSMOO", "#8C564B", "*"),
    "fednova": ("FedNova", "#7F7F7F", "h"),
    "fedyogi": ("FedYogi", "#BCBD22", "d"),
    "fedadagrad": ("FedAdagrad", "#17BECF", "<"),
}
OTHER_COLOURS = ["#9467BD", "#1F77B4", "#FF7F0E", "#2CA02C", "#E377C2"]  # algorithms not listed above
LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3))]  # one per setting
# Symbols of the hyper-parameters in labels (FedDyn α=0.01, FedProx μ=0.0001).
PARAM_SYMBOLS = {"alpha": "α", "mu": "μ", "server_lr": "η_g", "beta1": "β₁", "beta2": "β₂", "tau": "τ"}
FORMATS = ("png", "pdf", "svg")


def algo_family(name: Any) -> str:
    """``feddyn_alpha0.1`` (a preset), ``FedDynPaper`` (a variant's class) -> ``feddyn``; a name fedrun
    does not know stays as it is."""
    text = str(name).lower()
    for family in sorted(ALGO_STYLE, key=len, reverse=True):
        if text.startswith(family):
            return family
    return text


def algo_colour(name: Any) -> str:
    family = algo_family(name)
    if family in ALGO_STYLE:
        return ALGO_STYLE[family][1]
    return OTHER_COLOURS[sum(map(ord, family)) % len(OTHER_COLOURS)]  # stable across figures and runs


def algo_marker(name: Any) -> str:
    return ALGO_STYLE.get(algo_family(name), ("", "", "."))[2]


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def algo_label(name: Any, params: Mapping[str, Any] | None = None) -> str:
    """``FedDyn α=0.01``: the algorithm's name and the hyper-parameters given (``{"alpha": 0.01}``)."""
    family = algo_family(name)
    label = ALGO_STYLE[family][0] if family in ALGO_STYLE else str(name)
    parts = [f"{PARAM_SYMBOLS.get(k, k)}={_value(v)}" for k, v in (params or {}).items() if k != "variant" or v != "reference"]
    return " ".join([label, *parts])


def setting_title(config: Mapping[str, Any]) -> str:
    """The setting of a flat config (``partition``, ``partition.alpha``, ``participation``, ``num_clients``, ...)
    in a few words: ``synthetic, dirichlet α=0.3, 100 clients, participation 0.1``."""
    parts = []
    if config.get("data") is not None:
        parts.append(str(config["data"]))
    if config.get("partition") is not None:
        part = str(config["partition"])
        extra = [f"{PARAM_SYMBOLS.get(k.split('.', 1)[1], k.split('.', 1)[1])}={_value(v)}"
                 for k, v in sorted(config.items()) if k.startswith("partition.") and v is not None]
        parts.append(" ".join([part, *extra]))
    if config.get("num_clients") is not None:
        parts.append(f"{config['num_clients']} clients")
    if config.get("participation") is not None:
        parts.append(f"participation {_value(config['participation'])}")
    return ", ".join(parts)


def integer_rounds(ax: Any) -> None:
    """Round (or communication) ticks on whole numbers."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plain_log_ticks(ax: Any) -> None:
    """Tick labels of a log axis as plain numbers (1.5, 2), not powers of ten (1.5 x 10^0)."""
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))


def legend_outside(ax: Any, **kwargs: Any) -> None:
    """The legend to the right of the axes, so it never hides a curve."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, **kwargs)


def save(fig: Any, path: Path, dpi: int = 150) -> list[Path]:
    """Write ``fig`` as ``path`` (PNG) and, beside it, PDF and SVG; returns the files."""
    path = Path(path)
    out = []
    for fmt in FORMATS:
        target = path.with_suffix("." + fmt)
        fig.savefig(target, dpi=dpi, bbox_inches="tight")
        out.append(target)
    return out


def markevery(index: int, count: int, points: int, marks: int = 8) -> tuple[int, int]:
    """Markers on every ``points // marks``-th point, started at a different offset per curve, so
    curves that coincide (FedAvg under FedProx) still show each one's markers."""
    step = max(1, points // marks)
    return (index * step // max(count, 1)) % step, step
