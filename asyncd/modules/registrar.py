"""registrar: SIP registrations into usrloc tables, and lookups of them.

Runs in: main process (modparams, fixups, statistics in mod_init), udp and
tcp receivers and async task workers (save, lookup, registered, unregister,
lookup_branches, lookup_to_dset).

Kamailio: src/modules/registrar (registrar.c exports, save.c, lookup.c,
reply.c). save() is in registrar_save.py, the lookups in registrar_lookup.py;
this file holds the export table, the modparams and the statistics.
Differences, on purpose (docs/kamailio-registrar.md):
- no GRUU in replies (pub-gruu/temp-gruu), no outbound (RFC 5626) checks, no
  expires_range randomisation, no xavp_cfg/xavp_rcd, no Path 420 checks;
- reg_fetch_contacts/$ulc (registrar_pv.py): $ulc(p=>aorhash) is asyncd's crc32.
"""
from asyncd.core import log
from asyncd.core.counters import NO_RESET
from asyncd.core.errors import CfgError
from asyncd.core.exports import FuncExport, ModuleExports, P, ParamExport, PvExport
from asyncd.core.route_types import (BRANCH_ROUTE, FAILURE_ROUTE, ONREPLY_ROUTE,
                                     REQUEST_ROUTE)
from asyncd.modules import registrar_lookup as rl
from asyncd.modules import registrar_pv as rpv
from asyncd.modules import usrloc
from asyncd.modules.registrar_save import save

MOD = "registrar"


class RegistrarCfg:
    """The modparams (registrar's cfg group, read once at mod_init) and the
    statistics handles."""

    def __init__(self):
        self.default_expires = 3600
        self.min_expires = 60
        self.max_expires = 0
        self.min_expires_mode = 0
        self.default_q = -1
        self.max_contacts = 0
        self.retry_after = 0
        self.append_branches = 1
        self.case_sensitive = 1
        self.method_filtering = 0
        self.use_path = 0
        self.path_mode = 2
        self.rcv_param = "received"
        self.received_avp = ""
        self.use_expired_contacts = 0
        self.st_accepted = self.st_rejected = 0

    def configure(self, mp):
        for k in ("default_expires", "min_expires", "max_expires", "min_expires_mode",
                  "default_q", "max_contacts", "retry_after", "append_branches",
                  "case_sensitive", "method_filtering", "use_path", "path_mode",
                  "use_expired_contacts"):
            setattr(self, k, int(mp[k]))
        self.rcv_param = str(mp["received_param"] or "")
        avp = str(mp["received_avp"] or "").strip()
        if avp.startswith("$avp(") and avp.endswith(")"):
            avp = avp[5:-1]
        self.received_avp = avp

    def default_q_int(self):
        return self.default_q if 0 <= self.default_q <= 1000 else -1

    def received_of(self, ctx):
        """The received URI nathelper's fix_nated_register left in received_avp."""
        if not self.received_avp or ctx.avps is None:
            return ""
        v = ctx.avps.get(self.received_avp)
        return "" if v is None else str(v)


CFG = RegistrarCfg()


def _fix_table(site):
    a = site.args[0] if site.args else None
    if a is None or not a.literal:
        site.arg_error(0, "the location table name must be a literal")
    usrloc.want_domain(str(a.value))


def _fix_save(site):
    _fix_table(site)
    if len(site.args) > 1 and site.args[1].literal:
        try:
            int(str(site.args[1].value), 0)
        except ValueError:
            site.arg_error(1, f"save() flags must be a number, not {site.args[1].value!r}")


def _flags(v):
    if type(v) is int:
        return v
    try:
        return int(str(v), 0)
    except ValueError:
        log.err(MOD, f"save(): bad flags {v!r}")
        return 0


# -- script functions ---------------------------------------------------------------------
def w_save(ctx, site, table, flags=0, uri=None):
    return save(ctx, CFG, usrloc.S, table, _flags(flags), uri or None)


def w_lookup(ctx, site, table, uri=None):
    return rl.lookup(ctx, CFG, usrloc.S, table, uri or None)


def w_lookup_to_dset(ctx, site, table, uri=None):
    return rl.lookup(ctx, CFG, usrloc.S, table, uri or None, to_dset=True)


def w_lookup_branches(ctx, site, table):
    return rl.lookup_branches(ctx, CFG, usrloc.S, table)


def w_registered(ctx, site, table, uri=None, *_rest):
    return rl.registered(ctx, CFG, usrloc.S, table, uri or None)


def w_unregister(ctx, site, table, uri, ruid=None):
    return rl.unregister(ctx, CFG, usrloc.S, table, uri, ruid)


def w_reg_fetch_contacts(ctx, site, table, uri, profile):
    return rpv.fetch_contacts(CFG, usrloc.S, table, uri, profile)


def w_reg_free_contacts(ctx, site, profile):
    return rpv.free_contacts(profile)


# -- statistics (registrar.c mod_stats) -------------------------------------------------------
def mod_init(script):
    for dep in ("usrloc", "sl"):
        if dep not in script.modparams:     # Kamailio: "can't bind usrloc" / "can't load SL API"
            raise CfgError(f'registrar: needs the {dep} module (loadmodule "{dep}.so")')
    CFG.configure(script.modparams[MOD])
    st = script.stats
    CFG.st_accepted = st.register(MOD, "accepted_regs")
    CFG.st_rejected = st.register(MOD, "rejected_regs")
    # Kamailio sets these NO_RESET counters to the cfg values at startup
    for name, val in (("max_expires", CFG.max_expires), ("max_contacts", CFG.max_contacts),
                      ("default_expire", CFG.default_expires),
                      ("default_expires_range", int(script.modparams[MOD]["default_expires_range"])),
                      ("expires_range", int(script.modparams[MOD]["expires_range"]))):
        st.register(MOD, name, NO_RESET, func=lambda v=val: v)


_ROUTES = REQUEST_ROUTE | FAILURE_ROUTE | BRANCH_ROUTE | ONREPLY_ROUTE
_REQ = REQUEST_ROUTE | FAILURE_ROUTE


EXPORTS = ModuleExports(
    name=MOD,
    depends=("usrloc", "sl"),
    functions=[
        FuncExport("save", (P.STR,), w_save, _REQ | ONREPLY_ROUTE, _fix_save),
        FuncExport("save", (P.STR, P.STR), w_save, _REQ | ONREPLY_ROUTE, _fix_save),
        FuncExport("save", (P.STR, P.STR, P.STR), w_save, _REQ | ONREPLY_ROUTE, _fix_save),
        FuncExport("lookup", (P.STR,), w_lookup, _REQ | BRANCH_ROUTE, _fix_table),
        FuncExport("lookup", (P.STR, P.STR), w_lookup, _REQ | BRANCH_ROUTE, _fix_table),
        FuncExport("lookup_to_dset", (P.STR,), w_lookup_to_dset, _REQ | BRANCH_ROUTE, _fix_table),
        FuncExport("lookup_to_dset", (P.STR, P.STR), w_lookup_to_dset, _REQ | BRANCH_ROUTE,
                   _fix_table),
        FuncExport("lookup_branches", (P.STR,), w_lookup_branches, _REQ, _fix_table),
        FuncExport("registered", (P.STR,), w_registered, _ROUTES, _fix_table),
        FuncExport("registered", (P.STR, P.STR), w_registered, _ROUTES, _fix_table),
        FuncExport("registered", (P.STR, P.STR, P.INT), w_registered, _ROUTES, _fix_table),
        FuncExport("registered", (P.STR, P.STR, P.INT, P.INT), w_registered, _ROUTES, _fix_table),
        FuncExport("unregister", (P.STR, P.STR), w_unregister, _ROUTES, _fix_table),
        FuncExport("unregister", (P.STR, P.STR, P.STR), w_unregister, _ROUTES, _fix_table),
        FuncExport("reg_fetch_contacts", (P.STR, P.STR, P.STR), w_reg_fetch_contacts, _ROUTES,
                   _fix_table),
        FuncExport("reg_free_contacts", (P.STR,), w_reg_free_contacts, _ROUTES),
    ],
    pvs=[PvExport("ulc", rpv.get_ulc, None, rpv.parse_ulc, True)],
    params=[
        ParamExport("default_expires", int, 3600),
        ParamExport("default_expires_range", int, 0),
        ParamExport("expires_range", int, 0),
        ParamExport("default_q", int, -1),
        ParamExport("append_branches", int, 1),
        ParamExport("case_sensitive", int, 1),
        ParamExport("realm_prefix", str, ""),
        ParamExport("min_expires", int, 60),
        ParamExport("max_expires", int, 0),
        ParamExport("min_expires_mode", int, 0),
        ParamExport("received_param", str, "received"),
        ParamExport("received_avp", str, ""),
        ParamExport("max_contacts", int, 0),
        ParamExport("retry_after", int, 0),
        ParamExport("method_filtering", int, 0),
        ParamExport("use_path", int, 0),
        ParamExport("path_mode", int, 2),
        ParamExport("path_use_received", int, 0),
        ParamExport("gruu_enabled", int, 1),
        ParamExport("outbound_mode", int, 0),
        ParamExport("regid_mode", int, 0),
        ParamExport("tcp_persistent_flag", int, -1),
        ParamExport("sock_flag", int, -1),
        ParamExport("xavp_cfg", str, ""),
        ParamExport("xavp_rcd", str, ""),
        ParamExport("contact_max_size", int, 512),
        ParamExport("use_expired_contacts", int, 0),
    ],
    mod_init=mod_init,
)
