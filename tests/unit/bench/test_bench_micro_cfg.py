"""The cfg micro benchmark runs and both engines agree on the effects."""
from bench import micro_cfg


def test_micro_cfg_smoke():
    # main() itself asserts that both engines leave the same effects; timings
    # are not asserted here (the machine is shared), see docs/benchmarks.md
    res = micro_cfg.main(["--n", "5000", "--repeat", "2"])
    assert res["compile_cfg_lines"] >= 250 and res["compile_ms"] > 0
    assert res["run_us_compiled"] > 0 and res["run_us_tree_walker"] > 0
