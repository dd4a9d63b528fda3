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


# xlog(text), xlog(level, text), xlog(facility, level, text): the argument
# positions differ, so one function per arity
def w_xlog_1(ctx, site, text):
    return _emit(log.L_ERR, site, text)


def w_xlog_2(ctx, site, level, text):
    return _emit(_level(level), site, text)


def w_xlog_3(ctx, site, facility, level, text):
    return _emit(_level(level), site, text)


def w_xinfo(ctx, site, text):
    return _emit(log.L_INFO, site, text)


def w_xnotice(ctx, site, text):
    return _emit(log.L_NOTICE, site, text)


def w_xwarn(ctx, site, text):
    return _emit(log.L_WARN, site, text)


def w_xerr(ctx, site, text):
    return _emit(log.L_ERR, site, text)


def w_xdbg(ctx, site, text):
    return _emit(log.L_DBG, site, text)


def w_xalert(ctx, site, text):
    return _emit(log.L_ALERT, site, text)


def w_xcrit(ctx, site, text):
    return _emit(log.L_CRIT, site, text)


def w_xbug(ctx, site, text):
    return _emit(log.L_BUG, site, text)


EXPORTS = ModuleExports(
    name="xlog",
    functions=[
        FuncExport("xlog", (P.STR,), w_xlog_1, fixup=_fixed_fixup(log.L_ERR)),
        FuncExport("xlog", (P.STR, P.STR), w_xlog_2, fixup=_level_fixup),
        FuncExport("xlog", (P.STR, P.STR, P.STR), w_xlog_3),
        FuncExport("xinfo", (P.STR,), w_xinfo, fixup=_fixed_fixup(log.L_INFO)),
        FuncExport("xnotice", (P.STR,), w_xnotice, fixup=_fixed_fixup(log.L_NOTICE)),
        FuncExport("xwarn", (P.STR,), w_xwarn, fixup=_fixed_fixup(log.L_WARN)),
        FuncExport("xerr", (P.STR,), w_xerr, fixup=_fixed_fixup(log.L_ERR)),
        FuncExport("xdbg", (P.STR,), w_xdbg, fixup=_fixed_fixup(log.L_DBG)),
        FuncExport("xalert", (P.STR,), w_xalert, fixup=_fixed_fixup(log.L_ALERT)),
        FuncExport("xcrit", (P.STR,), w_xcrit, fixup=_fixed_fixup(log.L_CRIT)),
        FuncExport("xbug", (P.STR,), w_xbug, fixup=_fixed_fixup(log.L_BUG)),
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
