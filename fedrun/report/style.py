"""What every fedrun figure shares: a colour family and marker per algorithm (a shade per hyperparameter
value: :func:`shade`), short labels (``FedDyn α=0.01``, ``Dir(0.3)``, ``p=0.1``), integer round ticks,
the legend outside the axes, PNG + PDF + SVG.

The per-run plot (:mod:`fedrun.observers.plot`), the report's curves (:mod:`fedrun.report.figures`) and the
compare scripts use these, so FedDyn has the same colour in every figure a paper takes from fedrun.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

# One colour (colour-blind safe, Okabe-Ito first) and one marker per algorithm, keyed by the algorithm's
# class (``algo._target_``: a preset such as feddyn_alpha0.1 is FedDyn) or a shipped option's exact name;
# fixed across figures. Names are matched exactly, never by prefix: a user's ``fedavgm`` is not FedAvg.
ALGO_STYLE: dict[str, tuple[str, str, str]] = {  # lower-case class name -> (label, colour, marker)
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
    "feddynpaper": ("FedDyn (Alg. 1)", "#A63603", ">"),
    "scaffoldpaper": ("SCAFFOLD (Alg. 1)", "#7A0177", "p"),
    "fedoptsgd": ("FedOpt-SGD", "#08306B", "8"),
}
# Algorithms fedrun does not know: colours no known algorithm has, handed out in order within a figure.
OTHER_COLOURS = ["#9467BD", "#2CA02C", "#E377C2", "#1B9E77", "#FF7F0E", "#666666", "#B15928", "#6A3D9A"]
LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2)), (0, (3, 1, 1, 1))]  # one per setting
# Symbols of the hyper-parameters in labels (FedDyn α=0.01, FedProx μ=0.0001).
PARAM_SYMBOLS = {"alpha": "α", "mu": "μ", "server_lr": "η_g", "beta1": "β₁", "beta2": "β₂", "tau": "τ", "lamb": "λ",
                 "rho": "ρ", "gmf": "β", "sigma": "σ", "shards_per_client": "shards"}
# Short names of the top-level keys in labels (p=0.1, m=100).
KEY_SYMBOLS = {"participation": "p", "num_clients": "m", "local_epochs": "E", "batch_size": "B", "lr": "lr", "weight_decay": "wd"}
FORMATS = ("png", "pdf", "svg")


def algo_family(name: Any) -> str:
    """``fedrun.algorithms.feddyn.FedDyn`` or ``FedDyn`` or ``feddyn`` -> ``feddyn``; ``feddyn_paper`` ->
    ``feddynpaper``. Exact names only: a name fedrun does not know stays as it is (lower case)."""
    text = str(name).rsplit(".", 1)[-1].lower()
    return text.replace("_", "") if text.replace("_", "") in ALGO_STYLE else text


def algo_colour(name: Any) -> str:
    family = algo_family(name)
    if family in ALGO_STYLE:
        return ALGO_STYLE[family][1]
    return OTHER_COLOURS[sum(map(ord, family)) % len(OTHER_COLOURS)]  # stable across figures (a figure resolves clashes: styles)


def algo_marker(name: Any) -> str:
    return ALGO_STYLE.get(algo_family(name), ("", "", "."))[2]


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def algo_label(name: Any, params: Mapping[str, Any] | None = None) -> str:
    """``FedDyn α=0.01``: the algorithm's name and the hyper-parameters given (``{"alpha": 0.01}``)."""
    family = algo_family(name)
    label = ALGO_STYLE[family][0] if family in ALGO_STYLE else str(name)
    return " ".join([label, *param_parts(params)])


def param_parts(params: Mapping[str, Any] | None) -> list[str]:
    """``["α=0.01", "μ=0.001"]`` for ``{"alpha": 0.01, "mu": 0.001}``."""
    return [f"{PARAM_SYMBOLS.get(k, k)}={_value(v)}" for k, v in (params or {}).items() if k != "variant" or v != "reference"]


def partition_label(name: Any, params: Mapping[str, Any] | None = None) -> str:
    """``Dir(0.3)``, ``IID``, ``2 shards``, ``lognormal σ=0.3, Dir(0.3)``, ``natural`` from the partition
    function (``fedrun.data.partition.dirichlet`` or its option name) and its parameters."""
    params = dict(params or {})
    kind = str(name).rsplit(".", 1)[-1].lower()
    if kind.startswith("dirichlet") and "alpha" in params:
        return f"Dir({_value(params['alpha'])})"
    if kind == "iid":
        return "IID"
    if kind == "shards" and "shards_per_client" in params:
        return f"{params['shards_per_client']} shards"
    if kind == "unbalanced":
        text = f"lognormal σ={_value(params.get('sigma'))}"
        return text + (f", Dir({_value(params['alpha'])})" if params.get("alpha") is not None else "")
    return " ".join([kind, *(f"{PARAM_SYMBOLS.get(k, k)}={_value(v)}" for k, v in params.items())])


def key_label(key: str, value: Any) -> str:
    """``p=0.1`` for participation, ``m=100`` for num_clients, else ``key=value``."""
    return f"{KEY_SYMBOLS.get(key, key)}={_value(value)}"


def shade(colour: str, index: int, count: int) -> str:
    """The ``index``-th of ``count`` shades of ``colour``, from darker (first) to lighter (last); the
    middle one (an odd count) or one alone is ``colour`` itself."""
    from matplotlib.colors import to_hex, to_rgb

    if count <= 1:
        return colour
    t = -0.45 + 0.9 * index / (count - 1)  # -0.45 (darker) .. +0.45 (lighter)
    rgb = to_rgb(colour)
    mixed = [c * (1 + t) if t < 0 else c + (1 - c) * t for c in rgb]
    return to_hex([min(1.0, max(0.0, c)) for c in mixed])


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


def faint(ax: Any, x: Any, y: Any, **kwargs: Any) -> Any:
    """A faint line (the raw values under a moving average) that does not widen the axes' data range:
    added as an artist, not plotted, so its spikes cannot squash the curves that matter."""
    from matplotlib.lines import Line2D

    line = Line2D(x, y, alpha=0.25, linewidth=0.7, **kwargs)
    ax.add_artist(line)
    return line


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
