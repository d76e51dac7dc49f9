"""Plots that have no command of their own: the IIA table."""

import pytest

import jaxcirc as jc


def test_iia_table(tmp_path):
    png = jc.viz.plot_iia({"right": 1.0, "wrong": 0.31}, tmp_path / "t" / "iia.png", title="x")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5_000


def test_iia_table_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"IIA of 'wrong' is 1.5"):
        jc.viz.plot_iia({"right": 1.0, "wrong": 1.5}, tmp_path / "iia.png")
    with pytest.raises(ValueError, match="at least one"):
        jc.viz.plot_iia({}, tmp_path / "iia.png")
    assert not (tmp_path / "iia.png").exists()
