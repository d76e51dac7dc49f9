"""English prose from the system's `fortunes` files: entries, order, and the error without them."""

import itertools

import pytest

from jaxcirc.tasks._corpus import mixed_text, prose_text


def _fortunes(tmp_path):
    (tmp_path / "b").write_text("She said so.\n%\nHe did not.\n%\n")
    (tmp_path / "a").write_text("First entry\nof two lines.\n%\n\n%\nSecond.\n")
    (tmp_path / "a.dat").write_bytes(b"\x00\x01")  # the index strfile writes: not text
    (tmp_path / "a.u8").symlink_to(tmp_path / "a")  # the UTF-8 alias: not read twice
    return tmp_path


def test_prose_entries_in_file_order(tmp_path):
    docs = list(prose_text(_fortunes(tmp_path)))
    assert docs == ["First entry\nof two lines.", "Second.", "She said so.", "He did not."]


def test_mixed_alternates_prose_and_docstrings(tmp_path):
    docs = list(itertools.islice(mixed_text(_fortunes(tmp_path)), 6))
    assert docs[0] == "First entry\nof two lines." and docs[2] == "Second."
    assert docs[1].startswith("__future__")  # the first docstring document
    assert "She said so." in docs


def test_missing_package_names_the_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes"):
        next(prose_text(tmp_path / "none"))
