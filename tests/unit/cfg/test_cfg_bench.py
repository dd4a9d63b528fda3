"""The cfg micro benchmark runs, both engines agree on the effects, and the
compiled script is faster than the tree-walking baseline."""
from bench import micro_cfg


def test_micro_cfg_smoke():
    res = micro_cfg.main(["--n", "5000"])
    assert res["compile_cfg_lines"] >= 250 and res["compile_ms"] > 0
    assert res["run_us_compiled"] > 0
    assert res["speedup"] > 1.0
