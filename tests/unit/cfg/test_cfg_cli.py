"""`asyncd -c -f FILE` checks a cfg (fixups included) and stops startup with
one `file:line:col: message` line and a non-zero exit; `--dump-compiled`
prints the generated source."""
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def _run(*args):
    return subprocess.run([sys.executable, "-m", "asyncd", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_check_good_cfg_and_dump(tmp_path):
    cfg = tmp_path / "ok.cfg"
    cfg.write_text('loadmodule "xlog.so"\nrequest_route {\n    xlog("L_INFO", "hi $rm\\n");\n}\n')
    p = _run("-c", "--dump-compiled", "-f", str(cfg))
    assert p.returncode == 0, p.stderr
    assert "def R" in p.stdout and "ok.cfg" in p.stdout


def test_check_broken_cfg_fails_with_location(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text('async_workers=1\nloadmodule "tm.so"\nloadmodule "async.so"\n'
                   'request_route {\n    async_task_route("RESUME", "abc");\n}\n'
                   'route[RESUME] {\n    exit;\n}\n')
    p = _run("-c", "-f", str(cfg))
    assert p.returncode != 0
    assert f"{cfg}:5:5: " in p.stderr and "async_task_group_route" in p.stderr
