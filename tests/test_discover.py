"""`jaxcirc discover` on the embedded induction model (reduced settings) and its HTML report:
the JSON against independent recomputations, the previous-token -> induction-head path in the
circuit, and the report rendered in headless Chromium (every image loads, nothing overflows)."""

import html
import json
import re
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcirc import Patch, intervene, zoo
from jaxcirc.cli import main
from jaxcirc.graph import Circuit, EdgeMask, ablation_values, graph, masked_logits
from jaxcirc.viz._report import PNG, Report, format_number

N, HALF, SEED = 4, 6, 0
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("discover")
    argv = ["discover", "--out", str(out), "--n-prompts", str(N), "--half-len", str(HALF),
            "--seed", str(SEED), "--trials", "64", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return out, json.loads((out / "report.json").read_text())


def test_circuit_has_the_induction_path_and_its_faithfulness_is_right(run):
    out, record = run
    circuit = record["circuit"]
    edges = [tuple(e) for e in circuit["edges"]]
    assert any(s == "L0H2" and re.fullmatch(r"L1H\d\.k", t) for s, t in edges), edges
    assert [list(e) for e in edges if e[0].startswith("L") and e[1].endswith(".k")] == circuit[
        "k_composition"
    ]
    # faithfulness recomputed by hand from the edge list: (m(C) - m(∅)) / (m(M) - m(∅))
    model = zoo.induction_model()
    task = zoo.induction_task(N, HALF, SEED, d_vocab=model.cfg.d_vocab)
    g = graph(model)
    ablated = ablation_values(model, task.clean, task.corrupt, "corrupt", g)
    m = lambda mask: float(task.metric(masked_logits(model, task.clean, mask, ablated, g)))
    full, empty = m(Circuit.full(g)), m(EdgeMask(jnp.zeros(g.valid.shape), g))
    assert full == pytest.approx(record["task"]["metric_clean"], abs=1e-4)
    expected = (m(Circuit.from_edges(g, edges)) - empty) / (full - empty)
    assert np.isfinite(circuit["faithfulness"])
    assert circuit["faithfulness"] == pytest.approx(expected, abs=1e-4)
    assert circuit["faithfulness"] >= 0.9 - 1e-6 or circuit["n_edges"] == len(g.edges())
    # the per-prompt metric of the model is the task metric's, and means to the clean value
    model_values = np.asarray(task.metric.per_example(jax.vmap(model)(task.clean)))
    np.testing.assert_allclose(circuit["per_prompt"]["model"], model_values, atol=1e-4)
    # the number is in the HTML, with the sentence saying what it means
    page = html.unescape((out / "report.html").read_text())
    assert format_number(circuit["faithfulness"]) in page
    assert "With only these edges the model keeps" in page
    assert "jaxcirc discover --task induction" in page and "--n-prompts 4" in page


def test_head_patching_matches_a_direct_patch_and_methods_ran(run):
    """The head map's L1H2 cell equals patching that head's clean `z` by hand."""
    out, record = run
    model = zoo.induction_model()
    task = zoo.induction_task(N, HALF, SEED, d_vocab=model.cfg.d_vocab)
    clean_z = jax.vmap(lambda t: model.run(t)[1]["blocks.1.attn.hook_z"])(task.clean)

    def patched(t, z):
        return intervene(model, {"blocks.1.attn.hook_z": Patch(z, head=2)})(t)

    value = float(task.metric(jax.vmap(patched)(task.corrupt, clean_z)))
    clean, corrupt = record["task"]["metric_clean"], record["task"]["metric_corrupt"]
    restored = record["patching"]["head"]["values"][1][2]
    assert restored == pytest.approx((value - corrupt) / (clean - corrupt), abs=1e-4)
    assert set(record["methods"]) == {"eap", "eap-ig", "acdc", "circuit-lasso"}
    assert record["abstraction"]["ran"] and len(record["abstraction"]["iia"]) == 3
    assert all(0.0 <= v <= 1.0 for v in record["abstraction"]["iia"])
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        ["head_patching.png", "position_patching.png", "circuits.png", "faithfulness.png",
         "completeness.png", "circuit_vs_model.png", "iia.png"]
    )  # fmt: skip


def _browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


CHECK = """<script>
window.addEventListener("load", () => {
  const e = document.documentElement;
  const r = {images: [...document.images].map(i => i.complete && i.naturalWidth > 0),
             scroll: e.scrollWidth, client: e.clientWidth};
  const pre = document.createElement("pre");
  pre.id = "jaxcirc-check"; pre.textContent = JSON.stringify(r); document.body.appendChild(pre);
});
</script></body>"""


@pytest.mark.parametrize("width", [1280, 700])
def test_report_renders_in_a_headless_browser(run, tmp_path, width):
    browser = _browser()
    if browser is None:
        pytest.skip(f"no browser binary found (looked for {', '.join(BROWSERS)})")
    out, _ = run
    page = (out / "report.html").read_text()
    n_images = page.count("<img ")
    assert n_images == 7 and "http://" not in page and "https://" not in page
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--window-size={width},900", "--virtual-time-budget=5000"]  # fmt: skip
    dom = subprocess.run(
        [*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    found = re.search(r'<pre id="jaxcirc-check">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    check = json.loads(html.unescape(found.group(1)))
    assert check["images"] == [True] * n_images, check
    assert check["scroll"] <= check["client"], check
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120)  # fmt: skip
    assert shot.read_bytes().startswith(PNG)


def test_report_escapes_text_and_names_bad_inputs(tmp_path):
    report = Report("a <b> title", "jaxcirc discover --out 'x y'")
    report.section("S", "text & more").number("n", 0.123456, "what it means")
    report.table(["a", "b"], [[1, float("nan")]], "caption")
    page = report.html()
    assert "a &lt;b&gt; title" in page and "text &amp; more" in page and "<b>" not in page
    assert (
        ">0.1235<" in page and ">n/a<" in page and "jaxcirc discover --out &#x27;x y&#x27;" in page
    )
    with pytest.raises(ValueError, match="needs a sentence saying what it means"):
        report.number("faithfulness", 0.9, " ")
    with pytest.raises(ValueError, match="table row 0 has 1 cells for 2 columns"):
        report.table(["a", "b"], [[1]])
    bad = tmp_path / "fig.png"
    bad.write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match=f"figure {re.escape(str(bad))} is not a PNG"):
        report.figure(bad, "caption")
    assert report.write(tmp_path / "r.html").read_text() == page


def test_bad_arguments_are_named(tmp_path, capsys):
    assert main(["discover", "--task", "ioi", "--out", str(tmp_path)]) == 2
    assert "'ioi' needs a tokenizer" in capsys.readouterr().err
    assert main(["discover", "--method", "eap-ig2", "--out", str(tmp_path)]) == 2
    assert "did you mean 'eap-ig'" in capsys.readouterr().err
    assert main(["discover", "--half-len", "40", "--out", str(tmp_path)]) == 2
    assert "--half-len: need 2..24" in capsys.readouterr().err
