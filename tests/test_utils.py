"""Shared pieces: safe output paths, atomic writes, one-line errors."""
from __future__ import annotations

import os

import pytest

from utils import CamlabError, atomic_write, atomic_write_text, reason, run_cli, safe_subdir


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
    def body():
        raise CamlabError("bad\ninput   here")
    assert run_cli("x.py", body) == 2
    assert capsys.readouterr().err == "x.py: error: bad input here\n"
    assert run_cli("x.py", lambda: None) == 0
    assert reason(ValueError("")) == "ValueError"
