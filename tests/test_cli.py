"""The `jaxcirc` command and the heatmaps it draws."""

import json

import numpy as np
import pytest

import jaxcirc
from jaxcirc.cli import main
from jaxcirc.viz import heatmap, patching_heatmap, patching_labels

PNG = b"\x89PNG\r\n\x1a\n"


def _patch(tmp_path, *extra):
    return main(["patch", "--out", str(tmp_path), "--n-prompts", "2", "--half-len", "4", *extra])


def test_patch_resid_pre_per_position(tmp_path, capsys):
    assert _patch(tmp_path) == 0
    png, js = tmp_path / "patch_resid_pre_position.png", tmp_path / "patch_resid_pre_position.json"
    assert png.read_bytes().startswith(PNG)
    record = json.loads(js.read_text())
    assert record["site"] == "resid_pre" and record["per"] == "position"
    assert record["shape"] == [2, 8] and np.asarray(record["values"]).shape == (2, 8)
    assert list(record["axes"]) == ["layer", "position"]
    assert record["axes"]["layer"] == ["L0", "L1"] and len(record["axes"]["position"]) == 8
    assert record["metric_clean"] > record["metric_corrupt"]
    assert set(record["timing"]) >= {"load_s", "sweep_s", "total_s"}
    # patching the whole clean residual stream before layer 0 at every position is the clean run;
    # one position at a time restores part of it
    assert np.nanmax(record["restored"]) <= 1.0 + 1e-4
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files
    out = capsys.readouterr().out
    assert "top units" in out and str(png) in out


def test_patch_heads_finds_the_induction_heads(tmp_path):
    assert _patch(tmp_path, "--site", "z", "--no-progress") == 0
    record = json.loads((tmp_path / "patch_z_head.json").read_text())
    values = np.asarray(record["values"])
    assert values.shape == (2, 4) and record["per"] == "head"
    assert values[1].max() > values[0].max()  # layer 1 holds the induction heads


def test_patch_position_head(tmp_path):
    assert _patch(tmp_path, "--site", "v", "--per", "position_head", "--no-progress") == 0
    record = json.loads((tmp_path / "patch_v_position_head.json").read_text())
    assert np.asarray(record["values"]).shape == (2, 8, 4)
    assert list(record["axes"]) == ["layer", "position", "head"]
    assert (tmp_path / "patch_v_position_head.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--site", "resid_pr"], "did you mean 'resid_pre'?"),
        (["--per", "hed"], "did you mean 'head'?"),
        (["--site", "z", "--per", "position"], "did you mean 'head'?"),
        (["--site", "mlp_out"], "has no site 'mlp_out'"),
        (["--half-len", "40"], "at most 24"),
        (["--n-prompts", "0"], "--n-prompts"),
    ],
)
def test_bad_arguments_name_the_fix(tmp_path, capsys, argv, message):
    assert main(["patch", "--out", str(tmp_path), "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"jaxcirc {jaxcirc.__version__}"
    assert main(["patch", "--help"]) == 0
    assert "--site" in capsys.readouterr().out
    assert main([]) == 2


def test_heatmap_writes_a_png(tmp_path):
    values = np.array([[0.5, -1.0, 0.0], [2.0, np.nan, -0.25]])
    path = heatmap(
        values,
        path=tmp_path / "a" / "h.png",
        x_labels=["the", "cat", "sat"],
        y_labels=["L0", "L1"],
        title="t",
    )
    assert path == tmp_path / "a" / "h.png" and path.read_bytes().startswith(PNG)
    with pytest.raises(ValueError, match="x_labels has 2 labels for 3 columns"):
        heatmap(values, path=tmp_path / "b.png", x_labels=["a", "b"])
    with pytest.raises(ValueError, match="2-D"):
        heatmap(np.zeros(3), path=tmp_path / "c.png")


def test_patching_labels():
    values = np.zeros((2, 5, 3))
    matrix, axes, x, y = patching_labels(values, "position_head", position_labels="abcde")
    assert matrix.shape == (6, 5) and x == list("abcde")
    assert y[:4] == ["L0H0", "L0H1", "L0H2", "L1H0"]
    assert axes == {"layer": ["L0", "L1"], "position": list("abcde"), "head": ["H0", "H1", "H2"]}
    values = np.arange(6.0).reshape(2, 3)
    matrix, _, x, y = patching_labels(values, "head")
    assert x == ["H0", "H1", "H2"] and y == ["L0", "L1"] and matrix is not None
    with pytest.raises(ValueError, match="per='position' result has axes"):
        patching_labels(values[0], "position")
    with pytest.raises(ValueError, match="unknown per"):
        patching_labels(values, "neuron")


def test_patching_heatmap(tmp_path):
    path = patching_heatmap(np.zeros((2, 4)), "head", path=tmp_path / "p.png")
    assert path.read_bytes().startswith(PNG)
