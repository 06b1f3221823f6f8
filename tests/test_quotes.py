"""The README and docs/ quote report/published/: each marked block equals what it names, and
every number with three or more decimals in a paragraph citing published files is in them."""
from __future__ import annotations

from pathlib import Path

import pytest

from camlab.utils import CamlabError
from conftest import ROOT
from research import publish

TABLES = "note 0.1234\n\n| a | b |\n|---|---|\n| 1 | 0.500 |\n\ntext\n| c |\n|---|\n"


def test_a_quote_is_refreshed_from_the_table_it_names(tmp_path) -> None:
    (tmp_path / "t.md").write_text(TABLES)
    text = ("x\n<!-- published: t.md table 2 -->\nstale\n<!-- /published -->\n"
            "<!-- published: t.md table 1 -->\n<!-- /published -->\ny\n")
    assert publish.quoted(text, tmp_path) == ("x\n<!-- published: t.md table 2 -->\n| c |\n|---|\n<!-- /published -->\n"
                                              "<!-- published: t.md table 1 -->\n| a | b |\n|---|---|\n| 1 | 0.500 |\n"
                                              "<!-- /published -->\ny\n")
    whole = "<!-- published: t.md -->\n<!-- /published -->\n"
    assert publish.quoted(whole, tmp_path) == f"<!-- published: t.md -->\n{TABLES}<!-- /published -->\n"


def test_a_quote_of_what_is_not_there_is_one_line(tmp_path) -> None:
    (tmp_path / "t.md").write_text(TABLES)
    with pytest.raises(CamlabError, match="table 3 of .*t.md, which has 2"):
        publish.quoted("<!-- published: t.md table 3 -->\n<!-- /published -->", tmp_path)
    with pytest.raises(CamlabError, match="gone.md, which does not exist: publish it first"):
        publish.quoted("<!-- published: gone.md -->\n<!-- /published -->", tmp_path)


def test_a_number_a_paragraph_cites_must_be_in_the_cited_file(tmp_path) -> None:
    (tmp_path / "t.md").write_text(TABLES)
    text = ("CAM gets 0.500 and −0.1234 here, 0.777 there ([t](report/published/t.md)).\n\n"
            "Uncited: 0.999.\n\n<!-- published: t.md table 1 -->\n| 0.888 |\n<!-- /published -->\n")
    assert publish.unquoted_numbers(text, tmp_path) == ["t.md: 0.777"]


@pytest.mark.parametrize("name", publish.QUOTING)
def test_the_readme_and_docs_quote_the_published_files(name) -> None:
    text = (ROOT / name).read_text()
    out = ROOT / publish.PUBLISHED_DIR
    assert publish.quoted(text, out) == text, f"{name}: a quoted block differs from its file (python iou.py --publish --quote)"
    assert publish.unquoted_numbers(text, out) == []
    for linked in set(publish.LINK.findall(text)):
        assert (out / linked).is_file(), f"{name} links report/published/{linked}, which does not exist"


def results_text(name: str) -> str:
    """The results: docs/results.md whole, the README's "## Results" section."""
    text = (ROOT / name).read_text()
    if name == "README.md":
        text = text[text.index("\n## Results\n"):]
        text = text[:text.index("\n## ", 1)]
    return text


@pytest.mark.parametrize("name", ("README.md", "docs/results.md"))
def test_every_result_number_cites_its_file(name) -> None:
    """In the README's results and the results page, a number with three or more decimals stands
    in a quoted block or in a paragraph that cites the published file it is in."""
    text = publish.QUOTE.sub("", results_text(name))
    uncited = [n for p in text.split("\n\n") if not publish.LINK.search(p) for n in publish.NUMBER.findall(p)]
    assert uncited == []


def test_every_published_file_is_the_one_its_table_wrote() -> None:
    """report/published/manifest.json's sha256 of each table's files equal the files here: no
    published file was edited by hand or left from another pass."""
    out = ROOT / publish.PUBLISHED_DIR
    manifest = publish.read_manifest(out)
    assert manifest["tables"], "the manifest names no table"
    for name, table in manifest["tables"].items():
        assert table["command"] and table["files"]
        for file, sha in table["files"].items():
            assert publish.digest(out / file) == sha, f"{file} ({name}) differs from what its table wrote"
