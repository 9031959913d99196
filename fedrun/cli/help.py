"""``fedrun --help`` and ``fedrun --version``, answered before anything heavy is imported.

The console script starts here. ``--help`` (``-h``) lists the config groups with their options and
the top-level keys with their defaults, each with the one-line description its YAML file gives
(``conf/config.yaml``'s comments, each option's first comment line); ``--version`` prints fedrun's
version. Both read only text files (no torch, no Hydra), so they answer in well under a second.
Everything else goes to :func:`fedrun.cli.main.main`; ``--hydra-help`` is Hydra's own help.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from fedrun.config import CONF_DIR

CONF = CONF_DIR
GROUPS = ("data", "partition", "model", "algo", "engine", "hetero", "experiment", "debug")
_KEY = re.compile(r"^([a-z_]+):\s*(.*?)\s*(?:#\s*(.*))?$")


def version_text() -> str:
    from importlib import metadata

    from fedrun.version import __version__

    parts = [f"fedrun {__version__}"]
    for dist in ("torch", "hydra-core"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(parts)


def _first_comment(path: Path) -> str:
    """The first sentence of the file's leading comment."""
    text = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):  # Hydra's directive, not a description
            text.append(line.lstrip("# ").strip())
    joined = " ".join(text)
    cut = re.search(r"\.(\s|$)", joined)
    return joined[: cut.start() + 1] if cut else joined


def _defaults(config: str) -> dict[str, str]:
    """group -> default option, from the defaults list of ``conf/config.yaml``."""
    found = re.findall(r"^\s*-\s*([a-z_]+):\s*([A-Za-z0-9_.]+)", config, flags=re.M)
    return {g: o for g, o in found if g in GROUPS}


def top_level_keys(config: str) -> list[tuple[str, str, str]]:
    """(key, default, description) of every top-level key of ``conf/config.yaml``, in file order."""
    out = []
    for line in config.splitlines():
        if line.startswith(("hydra:", "defaults:")):
            continue
        m = _KEY.match(line)
        if m and m.group(1) not in ("hydra", "defaults"):
            out.append((m.group(1), m.group(2), (m.group(3) or "").strip()))
    return out


def help_text(conf: Path = CONF) -> str:
    config = (conf / "config.yaml").read_text()
    defaults = _defaults(config)
    lines = [
        f"{version_text().split(',')[0]}: simulated federated learning from the command line.",
        "",
        "Usage:  fedrun [GROUP=OPTION ...] [KEY=VALUE ...]       one run (outputs/runs/...)",
        "        fedrun -m KEY=V1,V2 GROUP=O1,O2 ...             a sweep, every combination (outputs/multirun/...)",
        "        fedrun GROUP=OPTION --cfg job                    print the composed config (every key of an option)",
        "        fedrun --version | --hydra-help                  fedrun's version | Hydra's own flags",
        "",
        "Config groups (GROUP=OPTION; the default marked *):",
    ]
    for group in GROUPS:
        lines.append(f"  {group}:")
        for path in sorted((conf / group).glob("*.yaml")):
            mark = "*" if defaults.get(group) == path.stem else " "
            lines.append(f"   {mark}{group + '=' + path.stem:<28} {_first_comment(path)}")
    lines += ["", "Keys (KEY=VALUE; default in brackets):"]
    for key, default, text in top_level_keys(config):
        lines.append(f"  {key:<18} [{default}] {text}")
    lines += ["", "Example:  fedrun algo=fedavg partition=dirichlet partition.alpha=0.3 rounds=50",
              "Docs: README.md, docs/ (algorithms, datasets, sweeps, performance, reliability)."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--version" in args or "-V" in args:
        print(version_text())
        return
    if ("--help" in args or "-h" in args) and "--hydra-help" not in args:
        print(help_text(), end="")
        return
    nproc = [a for a in args if a.startswith("nproc=")]
    if nproc:
        _launch(nproc[-1].split("=", 1)[1], [a for a in args if not a.startswith("nproc=")])
        return
    run_main = _import_cli()
    run_main()


def _launch(n: str, rest: list[str]) -> None:
    """``fedrun nproc=N ...``: start N ranks of ``fedrun ...`` on this machine through
    ``torch.distributed.run`` (what ``torchrun --standalone --nproc-per-node N -m fedrun ...`` does).
    Rank 0 prints fedrun's sentence; a rank's failure is this command's exit code, without torchrun's
    ChildFailedError traceback; a rank killed by a signal gets one sentence."""
    import logging
    import signal

    if not n.isdigit() or int(n) < 1:
        print(f"fedrun: error: nproc={n} is not valid: give the number of ranks to start on this machine (e.g. nproc=2).", file=sys.stderr)
        sys.exit(2)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    for name in ("torch.distributed.elastic", "torch.distributed.run"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # its own account of a failure: the ranks' sentence says it
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={int(n)}", "--module", "fedrun", *rest])
    try:
        run(args)
    except ChildFailedError as err:
        failures = sorted(err.failures.items())
        own = [(r, f.exitcode) for r, f in failures if 0 < f.exitcode < 128]  # a rank's own exit (2: its sentence, 3: diverged)
        rank, code = own[0] if own else (failures[0][0], failures[0][1].exitcode)  # else torchrun's SIGTERM or a signal
        if code < 0:  # killed by a signal: no rank could say so
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
            print(f"fedrun: error: rank {rank} of {n} was killed by {name}: rerun the same command to continue from the "
                  "last checkpoint.", file=sys.stderr)
            code = 128 - code
        sys.exit(code)
    except SignalException as err:  # SIGTERM/SIGINT to this launcher: the ranks got it too and said so
        sys.exit(128 + int(err.sigval))


class _StoppedEarly(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _import_cli():
    """``fedrun.cli.main.main``, imported (torch, Hydra and the schemas: a second or more) with Ctrl-C and
    SIGTERM turned into one sentence meanwhile: nothing has been written yet."""
    import signal

    def stop(signum, frame):
        raise _StoppedEarly(signum)

    # a signal the parent made us ignore (SIGINT of a background job, nohup) stays ignored
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, handler in before.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, stop)
    try:
        from fedrun.cli.main import main as run_main  # torch, Hydra and the schemas only from here on
    except _StoppedEarly as stopped:
        name = signal.Signals(stopped.signum).name
        print(f"fedrun: error: stopped by {name} before the run started; nothing was written.", file=sys.stderr)
        sys.exit(128 + stopped.signum)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    return run_main
