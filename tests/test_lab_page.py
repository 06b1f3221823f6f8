"""docs/lab.md, the student's page: every command on it parses with today's flags, and its block
of reduced commands on the course's data runs as written, in order, on a stand-in course folder
(32×32 images, RGB 0/255 masks, no meta.json), writing the deliverables the page names."""
from __future__ import annotations

import re
import shlex

import pytest

import iou
import main
import visualize
from conftest import ROOT, write_course_layout

PAGE = ROOT / "docs" / "lab.md"
PROGRAMS = {"main.py": main, "visualize.py": visualize, "iou.py": iou}
TESTED = "<!-- the tests run the next block as written -->"


def _commands(text: str) -> list[list[str]]:
    """Every ``python <program> ...`` line of the page's code blocks, split as a shell would."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            if line.strip().startswith("python "):
                found.append(shlex.split(line, comments=True)[1:])
    return found


def test_every_command_on_the_lab_page_parses() -> None:
    commands = _commands(PAGE.read_text())
    assert len(commands) >= 20
    for program, *argv in commands:
        assert program in PROGRAMS, f"{program} is not one of the lab's files"
        PROGRAMS[program].build_parser().parse_args(argv)  # argparse exits on a stale flag


def test_the_course_data_block_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    text = PAGE.read_text()
    assert TESTED in text
    block = _commands(re.search(r"```bash\n.*?```", text.split(TESTED, 1)[1], flags=re.S).group(0))
    assert any("--cv" in argv for argv in block) and any("--compare" in argv for argv in block)
    monkeypatch.chdir(tmp_path)
    write_course_layout(tmp_path / "data" / "cifar-10-cam-seg-data", n_train=20, n_test=10)
    for program, *argv in block:
        code = PROGRAMS[program].main(argv)
        assert code == 0, f"{program} {' '.join(argv)}: {capsys.readouterr().err}"
    for deliverable in ("checkpoints/cam/best.pth", "checkpoints/cv5/cv.md", "checkpoints/seg/metrics.json",
                        "checkpoints/seg_rh/metrics.json", "visualize/cam/grid.png", "visualize/seg/00000_seg.png",
                        "report/compare_cam_seg.png", "report/iou.md",
                        "checkpoints/cam_checkpoint.pth"):
        assert (tmp_path / deliverable).is_file(), deliverable
    assert "true bird" not in (tmp_path / "report" / "iou.md").read_text()  # names are in figures, not tables
    assert "| cam | class | cam | 0.15 | 224 |" in (tmp_path / "report" / "iou.md").read_text()


@pytest.mark.parametrize("anchor", ["2.1", "2.2", "3.1", "3.2", "3.3", "3.4", "3.5"])
def test_the_page_covers_every_handout_task(anchor) -> None:
    assert re.search(rf"^##+ {re.escape(anchor)} ", PAGE.read_text(), flags=re.M), anchor
