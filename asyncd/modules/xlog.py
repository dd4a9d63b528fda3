"""The xlog module: xlog(), xinfo(), xnotice(), xwarn(), xerr(), xdbg(),
xalert(), xcrit() with pseudo-variables formatted at call time.

Runs in: every process running routes.

Kamailio: src/modules/xlog/xlog.c. A one-argument xlog() logs at L_ERR;
the level may be a literal (checked at startup) or a variable.
"""
from asyncd.core import log
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport

LEVELS = {"L_ALERT": log.L_ALERT, "L_BUG": log.L_BUG, "L_CRIT": log.L_CRIT,
          "L_ERR": log.L_ERR, "L_WARN": log.L_WARN, "L_NOTICE": log.L_NOTICE,
          "L_INFO": log.L_INFO, "L_DBG": log.L_DBG}
MOD = "script"


def _emit(level, site, text):
    if level <= log.state.level:
        log.log(level, MOD, text[:-1] if text.endswith("\n") else text, where=site.loc.where)
    return 1


def _level_fixup(site):
    a = site.args[0]
    if a.literal:
        if str(a.value) not in LEVELS:
            try:
                int(str(a.value))
            except ValueError:
                site.arg_error(0, f"{site.name}(): unknown log level {a.value!r} "
                                  f"(one of {', '.join(LEVELS)})")
        # the compiler skips the call (and the formatting) when the level is off
        site.data["log_level"] = _level(str(a.value))


def _fixed_fixup(level):
    def fixup(site):
        site.data["log_level"] = level
    return fixup


def _level(s):
    lv = LEVELS.get(s)
    if lv is None:
        try:
            lv = int(s)
        except (TypeError, ValueError):
            lv = log.L_ERR
    return lv


def xlog1(ctx, site, text):
    return _emit(log.L_ERR, site, text)


def xlog2(ctx, site, level, text):
    return _emit(_level(level), site, text)


def xlog3(ctx, site, facility, level, text):
    return _emit(_level(level), site, text)


def _fixed(level):
    def f(ctx, site, text):
        return _emit(level, site, text)
    f.__name__ = f"x_{log.LEVEL_NAMES.get(level, 'log').lower()}"
    return f


EXPORTS = ModuleExports(
    name="xlog",
    functions=[
        FuncExport("xlog", (P.STR,), xlog1, fixup=_fixed_fixup(log.L_ERR)),
        FuncExport("xlog", (P.STR, P.STR), xlog2, fixup=_level_fixup),
        FuncExport("xlog", (P.STR, P.STR, P.STR), xlog3),
        FuncExport("xinfo", (P.STR,), _fixed(log.L_INFO), fixup=_fixed_fixup(log.L_INFO)),
        FuncExport("xnotice", (P.STR,), _fixed(log.L_NOTICE), fixup=_fixed_fixup(log.L_NOTICE)),
        FuncExport("xwarn", (P.STR,), _fixed(log.L_WARN), fixup=_fixed_fixup(log.L_WARN)),
        FuncExport("xerr", (P.STR,), _fixed(log.L_ERR), fixup=_fixed_fixup(log.L_ERR)),
        FuncExport("xdbg", (P.STR,), _fixed(log.L_DBG), fixup=_fixed_fixup(log.L_DBG)),
        FuncExport("xalert", (P.STR,), _fixed(log.L_ALERT), fixup=_fixed_fixup(log.L_ALERT)),
        FuncExport("xcrit", (P.STR,), _fixed(log.L_CRIT), fixup=_fixed_fixup(log.L_CRIT)),
        FuncExport("xbug", (P.STR,), _fixed(log.L_BUG), fixup=_fixed_fixup(log.L_BUG)),
    ],
    params=[
        ParamExport("buf_size", int, 4096),
        ParamExport("force_color", int, 0),
        ParamExport("long_format", int, 0),
        ParamExport("prefix", str, "<script>: "),
        ParamExport("log_facility", str, "LOG_DAEMON"),
        ParamExport("log_colors", str, None, multi=True),
        ParamExport("methods_filter", int, -1),
    ],
)
