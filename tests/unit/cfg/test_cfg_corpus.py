"""Broken cfgs of tests/corpus/cfg: each must fail with the expected
`file:line:col: message` (the .expect file beside it)."""
import glob
import os

import pytest

from asyncd.cfg.compiler import compile_cfg
from asyncd.core.errors import CfgError

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "corpus", "cfg")
CASES = sorted(glob.glob(os.path.join(CORPUS, "*.cfg")))


def test_corpus_is_big_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("path", CASES, ids=[os.path.basename(p)[:-4] for p in CASES])
def test_broken_cfg_reports_location(path):
    with open(path[:-4] + ".expect") as f:
        efile, eline, ecol, emsg = f.read().strip().split(":", 3)
    with pytest.raises(CfgError) as ei:
        compile_cfg(path)
    e = ei.value
    assert (os.path.basename(e.file), e.line, e.col) == (efile, int(eline), int(ecol)), str(e)
    assert emsg.strip() in e.message
    # one line, `file:line:col: message`
    s = str(e)
    assert "\n" not in s and s.startswith(f"{e.file}:{e.line}:{e.col}: ")


ALL = CASES + sorted(glob.glob(os.path.join(CORPUS, "good", "*.cfg")))


@pytest.mark.parametrize("path", ALL, ids=[os.path.basename(p)[:-4] for p in ALL])
def test_every_prefix_only_cfg_errors(path):
    """Replayed in pieces: every truncation of a corpus cfg compiles or fails
    with a CfgError, never with another exception."""
    with open(path) as f:
        text = f.read()
    cuts = sorted(set(range(0, len(text), max(len(text) // 40, 1))) | {len(text)})
    for n in cuts:
        try:
            compile_cfg(text=text[:n], filename=os.path.basename(path))
        except CfgError:
            pass
