"""Logging in Kamailio's shape: ` 3(1234) INFO: <module> [file:line]: func(): text`.

Runs in: every process. Writes to stderr when log_stderror=yes (or -E),
else to syslog. The level threshold is the cfg `debug` (Kamailio's
numbers: ALERT -5 .. ERR -1, WARN 0, NOTICE 1, INFO 2, DBG 3).
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
    level = L_WARN
    stderr = True
    rank = 0
    facility = syslog.LOG_DAEMON
    out = sys.stderr


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


def enabled(level):
    return level <= state.level


def log(level, module, text, where=""):
    """where: 'file:line' of the emitter, or a cfg location for script logs."""
    if level > state.level:
        return
    name = LEVEL_NAMES.get(level, "INFO")
    loc = f" [{where}]" if where else ""
    line = f"{state.rank:2d}({os.getpid()}) {name}: <{module}>{loc}: {text}"
    if state.stderr:
        try:
            state.out.write(line if line.endswith("\n") else line + "\n")
            state.out.flush()
        except (OSError, ValueError):
            pass
    else:
        syslog.syslog(state.facility | _SYSLOG_PRIO.get(level, syslog.LOG_INFO), line.rstrip("\n"))


def err(module, text, where=""):
    log(L_ERR, module, text, where)


def warn(module, text, where=""):
    log(L_WARN, module, text, where)


def notice(module, text, where=""):
    log(L_NOTICE, module, text, where)


def info(module, text, where=""):
    log(L_INFO, module, text, where)


def dbg(module, text, where=""):
    log(L_DBG, module, text, where)
