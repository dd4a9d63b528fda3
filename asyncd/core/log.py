"""Logging in Kamailio's shape: ` 3(1234) ERROR: <tm> [tm/suspend.py:88]: t_continue(): text`.

Runs in: every process. Writes to stderr when log_stderror=yes (or -E),
else to syslog. The level threshold is the cfg `debug` (Kamailio's
numbers: ALERT -5 .. ERR -1, WARN 0, NOTICE 1, INFO 2, DBG 3).

One API for every caller: `log.err(module, text)` names the caller's
file:line and function, as Kamailio's LM_ERR does (src/core/dprint.h); a
caller that logs on behalf of the cfg passes `where="file.cfg:12"` (the
script location) instead. A disabled level costs one comparison: the
caller's frame is looked up only for lines that are written.
"""
import os
import sys
import syslog

L_ALERT, L_BUG, L_CRIT2, L_CRIT, L_ERR, L_WARN, L_NOTICE, L_INFO, L_DBG = -5, -4, -3, -2, -1, 0, 1, 2, 3
LEVEL_NAMES = {L_ALERT: "ALERT", L_BUG: "BUG", L_CRIT2: "CRITICAL", L_CRIT: "CRITICAL",
               L_ERR: "ERROR", L_WARN: "WARNING", L_NOTICE: "NOTICE", L_INFO: "INFO",
               L_DBG: "DEBUG"}
_SYSLOG_PRIO = {L_ALERT: syslog.LOG_ALERT, L_BUG: syslog.LOG_CRIT, L_CRIT2: syslog.LOG_CRIT,
                L_CRIT: syslog.LOG_CRIT, L_ERR: syslog.LOG_ERR, L_WARN: syslog.LOG_WARNING,
                L_NOTICE: syslog.LOG_NOTICE, L_INFO: syslog.LOG_INFO, L_DBG: syslog.LOG_DEBUG}


class _State:
    """The process's log settings (configure() changes them; children inherit them)."""

    def __init__(self):
        self.level = L_WARN
        self.stderr = True
        self.rank = 0
        self.facility = syslog.LOG_DAEMON
        self.out = sys.stderr
        self.prefix = ""          # log_prefix of the message being handled (set_prefix)


state = _State()


def configure(level=None, to_stderr=None, rank=None, facility=None):
    if level is not None:
        state.level = level
    if to_stderr is not None:
        state.stderr = to_stderr
    if rank is not None:
        state.rank = rank
    if facility is not None:
        state.facility = facility
        if not state.stderr:
            syslog.openlog("asyncd", syslog.LOG_PID, facility)


def set_prefix(text):
    """Kamailio's log_prefix_set(): every line until the next call carries
    `text` after the level, as Kamailio's ` NOTICE: {1 1 OPTIONS id} <script>:
    ...` (src/core/dprint.h LOG_FX with log_prefix_val); "" ends it."""
    state.prefix = text


def enabled(level):
    return level <= state.level


def log(level, module, text, where=""):
    """Write one line as it is: `where` is a location ('file:line') or ''."""
    if level > state.level:
        return
    name = LEVEL_NAMES.get(level, "INFO")
    loc = f" [{where}]" if where else ""
    line = f"{state.rank:2d}({os.getpid()}) {name}: {state.prefix}<{module}>{loc}: {text}"
    if state.stderr:
        try:
            state.out.write(line if line.endswith("\n") else line + "\n")
            state.out.flush()
        except (OSError, ValueError):
            pass
    else:
        syslog.syslog(state.facility | _SYSLOG_PRIO.get(level, syslog.LOG_INFO), line.rstrip("\n"))


def _emit(level, module, text, where, depth=2):
    if where is None:
        f = sys._getframe(depth)
        path = f.f_code.co_filename.split(os.sep)
        where = f"{'/'.join(path[-2:])}:{f.f_lineno}"
        text = f"{f.f_code.co_name}(): {text}"
    log(level, module, text, where)


def _level(level, name):
    def emit(module, text, where=None):
        if level <= state.level:
            _emit(level, module, text, where)
    emit.__name__ = emit.__qualname__ = name
    emit.__doc__ = f"Log `text` at {LEVEL_NAMES[level]} for `module` (see the module's docstring)."
    return emit


alert = _level(L_ALERT, "alert")
crit = _level(L_CRIT, "crit")
err = _level(L_ERR, "err")
warn = _level(L_WARN, "warn")
notice = _level(L_NOTICE, "notice")
info = _level(L_INFO, "info")
dbg = _level(L_DBG, "dbg")
