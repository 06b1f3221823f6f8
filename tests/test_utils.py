"""Shared pieces: safe output paths, atomic writes, one-line errors."""
from __future__ import annotations

import os

import pytest

from camlab import utils
from camlab.utils import CamlabError, atomic_write, atomic_write_text, reason, run_cli, safe_subdir


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "a\\b", "/abs"])
def test_safe_subdir_refuses_escapes(tmp_path, name) -> None:
    with pytest.raises(CamlabError, match="--exp_id"):
        safe_subdir(tmp_path, name)
    assert safe_subdir(tmp_path, "run_1+x") == tmp_path / "run_1+x"


def test_atomic_write_replaces_whole_files_with_normal_permissions(tmp_path) -> None:
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert os.listdir(path.parent) == ["a.txt"]  # no temporary file left
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_failed_write_keeps_the_old_file(tmp_path) -> None:
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old")

    def broken(f):
        f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken, mode="w")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_run_cli_turns_errors_into_one_line(capsys) -> None:
    def body():  # a library's message spanning lines, wrapped as camlab wraps them
        raise CamlabError(f"cannot read x: {reason(ValueError('bad' + chr(10) + 'input   here'))}")
    assert run_cli("x.py", body) == 2
    assert capsys.readouterr().err == "x.py: error: cannot read x: bad input here\n"

    def named():  # a file name with a NUL, a line break and an escape sequence from a file
        raise CamlabError("image a" + chr(0) + "b" + chr(10) + "c" + chr(27) + "[2J.png is missing")
    assert run_cli("x.py", named) == 2
    assert capsys.readouterr().err == "x.py: error: image a\\x00b\\nc\\x1b[2J.png is missing\n"
    assert run_cli("x.py", lambda: None) == 0
    assert reason(ValueError("")) == "ValueError"


@pytest.mark.parametrize("value, ok", [(0, True), (1, True), (0.5, True), (-1e-9, False), (1.0000001, False),
                                       (float("nan"), False), (float("inf"), False), (float("-inf"), False)])
def test_check_range_closed(value: float, ok: bool) -> None:
    if ok:
        utils.check_range("--x", value, 0, 1)
    else:
        with pytest.raises(utils.CamlabError, match=r"^--x must lie in \[0, 1\] \(why\), got "):
            utils.check_range("--x", value, 0, 1, why="why")


def test_check_range_open_ends_and_plain_integers() -> None:
    with pytest.raises(utils.CamlabError, match=r"--lr must lie in \(0, 1\], got 0$"):
        utils.check_range("--lr", 0.0, 0, 1, open_low=True)
    with pytest.raises(utils.CamlabError, match=r"--seed must lie in \[0, 4294967295\], got 99999999999$"):
        utils.check_range("--seed", 99999999999, 0, utils.SEED_MAX)
    utils.check_range("--lr", 1.0, 0, 1, open_low=True)
    with pytest.raises(utils.CamlabError):
        utils.check_range("--f", 1.0, 0, 1, open_high=True)


def test_run_cli_turns_an_allocation_failure_into_one_line(capsys) -> None:
    def body() -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 3840000000000 bytes.")
    assert utils.run_cli("main.py", body) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory" in err and "lower --img_size or --batch_size" in err

    def other() -> None:
        raise RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):  # anything else keeps its traceback
        utils.run_cli("main.py", other)


def test_unknown_flag_names_the_closest_known_one(capsys) -> None:
    parser = utils.OneLineParser(prog="main.py")
    parser.add_argument("--img_size", type=int)
    parser.add_argument("--epochs", type=int)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--img-size", "32"])
    line = capsys.readouterr().err
    assert exit_info.value.code == 2 and line.count("\n") == 1
    assert "unrecognized arguments: --img-size 32; did you mean --img_size? (see --help)" in line
    with pytest.raises(SystemExit):
        parser.parse_args(["--zzz"])
    assert "did you mean" not in capsys.readouterr().err  # nothing close: no guess


class _Log:
    """A stream that is not a terminal, recording what was printed."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> None:
        self.lines += [t for t in text.split("\n") if t]

    def flush(self) -> None:
        pass


def test_heartbeat_prints_a_line_every_interval_when_not_a_terminal() -> None:
    times = iter([0.0, 10.0, 31.0, 40.0, 62.0, 70.0])  # start, then one reading per batch
    log = _Log()
    items = list(utils.heartbeat(range(5), [4, 4, 4, 4, 4], "train", every_s=30, stream=log, clock=lambda: next(times)))
    assert items == [0, 1, 2, 3, 4]
    # at 31 s: 8 of 20 images, 8/31 img/s, 12 left -> 46.5 s; at 62 s: 16 done, 0.258 img/s, 4 left -> 15.5 s
    assert log.lines == ["train: 8/20 images, 0.3 img/s, about 46 s left",
                         "train: 16/20 images, 0.3 img/s, about 16 s left"]
    terminal = _Log()
    terminal.isatty = lambda: True  # a terminal has the progress bar: no lines
    assert list(utils.heartbeat(range(3), [1, 1, 1], "x", every_s=0, stream=terminal)) == [0, 1, 2]
    assert terminal.lines == []


def test_a_dangling_symlink_is_named_as_such(tmp_path) -> None:
    link = tmp_path / "data"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(OSError) as failed:
        os.mkdir(link)
    assert utils.os_fault(failed.value) == f"it is a symbolic link that leads nowhere (to {tmp_path / 'gone'})"
    with pytest.raises(OSError) as failed:
        os.mkdir(tmp_path)
    assert utils.os_fault(failed.value) == "it exists already"  # a real folder keeps the plain words
