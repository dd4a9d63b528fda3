"""tm's state, in one object: its parameters, the transaction table, the
timer feed, and what each process keeps for itself; plus the two things
every locked section ends with: sending what it queued and arming its
timers.

Runs in: main (tm's mod_init fills S before fork), every child (reads it;
child_init sets the per-process part).

S is made empty at import and filled by `S.configure()` from tm's mod_init:
the values come from the modparams the compiler resolved, whose defaults
are the export table's (asyncd/modules/tm/mod.py), so no default lives here.

Timer entries are `[kind, due, tindex, tlabel, arg, interval_ms]` (due on
the monotonic clock); the `timer` process runs them (tm/timer.py).
"""
import random
import time
from collections import defaultdict

from asyncd.core import log
from asyncd.ipc.delay_ring import DelayRing
from asyncd.ipc.timers import TimerFeed
from asyncd.modules.tm.cell import BR_FR, F_WAIT
from shm.tm_table import TmTable

MOD = "tm"
K_RETR, K_FR, K_RPL, K_WAIT = 1, 2, 3, 4
TIMER_SLOTS = 16384     # a locked section arms 1-3 entries (~25 bytes each): seconds of top rate
# Pending timer entries allowed per transaction-table slot: the feed's cap is
# this times the table size (its journal, 128 bytes a frame, costs memory
# only as far as it is used). Why 8: a transaction holds its slot for at least
# wt_timer (5 s) after its final reply, so the table admits at most nslots
# new ones per 5 s; each leaves its fr entry behind for up to fr_timer (30 s:
# cancel is by marking, the entry stays until due), plus one wait entry and
# one retransmission entry at a time: 30/5 + 2 = 8 per slot at the table's
# full rate. Beyond it tm's arm is refused and logged (the sweep still frees
# what a missing timer leaves behind).
TIMER_PER_CELL = 8

# transaction callback kinds (Kamailio's TMCB_*, src/modules/tm/t_hooks.h):
# RESPONSE_OUT fn(h, cell, code, reason, reply bytes or None for a local reply),
# after a reply went upstream; ON_FAILURE fn(h, cell, code, branch) when every
# branch failed, before the failure_route
TMCB_RESPONSE_OUT, TMCB_ON_FAILURE = "response_out", "on_failure"

# fr timers are armed as a probe this many seconds ahead, then at their
# deadline only if the branch still waits: most transactions end within
# milliseconds (a resumed task, a relayed call answered), and an entry kept
# until fr_timer (30 s) or fr_inv_timer (120 s) is mostly dead weight in the
# timer's heap and journal (cancel is by marking): 90,000 of them at 3,000/s
# of async_task_route, ~45 MB of PSS in the timer process (docs/benchmarks.md,
# the issue 12 soak).
FR_PROBE = 1.0

# Wait timers and fr probes need no millisecond: an entry due on a TICK
# boundary (rounded up) lets the timer process wake once per boundary for a
# batch instead of once per transaction (at 3,000/s the wait entries alone
# fell due every 0.33 ms and woke it 1,500 times a second:
# docs/benchmarks.md, "Issue 16"). A transaction stays in wait state up to
# TICK longer than wt_timer; Kamailio's own wait timer is a tick list too
# (src/modules/tm/timer.c, wait_handler on the 'fast' timer).
TICK = 0.05
# a first retransmission (Timer A/E at T1) may go out this much late: the timer
# process then wakes once per RETR_SLACK for the whole relay rate, not once per
# request (asyncd/ipc/delay_ring.py "Slack"; Kamailio counts its timers in 62.5 ms
# ticks: src/core/timer_ticks.h TIMER_TICKS_HZ)
RETR_SLACK = 0.005
PROBE = -1          # a K_FR entry's last field: a probe (its delay ring), not the deadline

# Claims: one u64 per process-table slot, (tindex << 32) | tlabel of the
# transaction the process is working on (a request route that created it, a
# resumed route), 0 when none. A process that dies leaves its claim behind;
# its replacement answers that transaction at once (recover_claim) instead of
# leaving it to fr_timer or, for a transaction that never got a timer, to the
# sweep (docs/architecture.md, "Respawn").
CLAIM_SLOTS = 1024

# tm's own counts (Kamailio's struct t_proc_stats, src/modules/tm/t_stats.h), kept
# as INTERNAL rows of script.stats: tm.stats and the tmx: statistics read them
# (asyncd/modules/tm/stats.py). A process bumps `S.cnt[S.st.<name>] += 1`.
COUNTS = ("waiting", "transactions", "client_transactions", "completed_2xx", "completed_3xx",
          "completed_4xx", "completed_5xx", "completed_6xx", "rpl_received", "rpl_generated",
          "rpl_sent", "deleted", "t_created", "t_freed", "delayed_free",
          "busy")     # asyncd's: requests tm answered 503 itself (mod.py _busy), for the exit summary


class TmCounts:
    """Handles of COUNTS (all 0 until tm's mod_init registers them); by_class[code // 100]
    is the completed_<class>xx handle of a final reply (-1 for a provisional)."""

    def __init__(self):
        for name in COUNTS:
            setattr(self, name, 0)
        self.by_class = [-1] * 10


class TmState:
    """Filled in main by tm's mod_init; every child inherits it by fork."""
    __slots__ = ("script", "table", "timers", "rings", "secret", "fr_ms", "fr_inv_ms", "wt_ms", "t1", "t2",
                 "max_inv_ms", "max_noninv_ms", "auto_inv_100", "auto_inv_100_reason",
                 "failure_reply_mode", "proc", "addrs", "claims", "claim0", "mine", "reliable",
                 "cnt", "st", "cbs")

    def __init__(self):
        self.script = self.table = self.timers = self.proc = self.claims = None
        self.rings = {}
        self.addrs = {}
        self.mine = -1
        self.claim0 = 0
        self.reliable = frozenset()
        self.cnt = defaultdict(int)       # this process's statistics row once child_init ran
        self.st = TmCounts()
        # other modules' transaction callbacks (Kamailio's register_tmcb), kind ->
        # {owner: fn}: registered in main by their mod_init, inherited by fork
        self.cbs = {TMCB_RESPONSE_OUT: {}, TMCB_ON_FAILURE: {}}

    def configure(self, script, mp):
        """tm's mod_init: `mp` holds every modparam of the export table."""
        self.fr_ms, self.fr_inv_ms = int(mp["fr_timer"]), int(mp["fr_inv_timer"])
        self.wt_ms = int(mp["wt_timer"])
        self.max_inv_ms, self.max_noninv_ms = int(mp["max_inv_lifetime"]), int(mp["max_noninv_lifetime"])
        self.auto_inv_100, self.auto_inv_100_reason = int(mp["auto_inv_100"]), str(mp["auto_inv_100_reason"])
        self.failure_reply_mode = int(mp["failure_reply_mode"])
        self.t1, self.t2 = int(mp["retr_timer1"]), int(mp["retr_timer2"])
        if self.fr_ms <= 0 or self.wt_ms <= 0 or self.t1 <= 0 or self.t2 < self.t1:
            raise RuntimeError("tm: fr_timer, wt_timer, retr_timer1 must be > 0 and "
                               "retr_timer2 >= retr_timer1")
        self.script = script
        self.secret = random.getrandbits(31)
        self.table = TmTable(script.shm)
        self.timers = TimerFeed("tm", 1, TIMER_PER_CELL * self.table.nslots, slots=TIMER_SLOTS,
                                rundir=lambda: script.rundir)
        # the entries every transaction arms with one delay: wait timers, fr
        # probes and the first retransmission of a relayed request (T1), which
        # every relay arms and its reply makes moot (asyncd/ipc/delay_ring.py);
        # each cell has at most one of each pending per branch, so a ring of
        # nslots overflows (into the feed) rarely
        self.rings = {K_WAIT: DelayRing("tm wait", K_WAIT, self.table.nslots),
                      K_FR: DelayRing("tm fr probe", K_FR, self.table.nslots),
                      K_RETR: DelayRing("tm retr", K_RETR, self.table.nslots, slack=RETR_SLACK)}
        self.proc = None
        self.addrs = {}
        # sockets on a reliable transport: no retransmission timers there (RFC 3261
        # 17.1.1.2 timer A, 17.1.2.2 timer E, 17.2.1 timer G are for unreliable ones)
        self.reliable = frozenset(i for i, a in enumerate(getattr(script, "sock_addrs", None) or ())
                                  if a[0] != "udp")
        off = script.shm.static_alloc(8 * CLAIM_SLOTS, align=8)
        self.claims = script.shm.qwords      # the arena's own view (released with it): no slice
        self.claim0 = off >> 3
        script.shm.buf[off:off + 8 * CLAIM_SLOTS] = bytes(8 * CLAIM_SLOTS)

    def child_init(self, proc):
        """Per process: who sends what tm queued, and its own caches."""
        self.proc = proc
        self.cnt = proc.cnt
        self.addrs = {}
        idx = getattr(proc, "index", None)
        self.mine = self.claim0 + idx if isinstance(idx, int) and 0 < idx < CLAIM_SLOTS else -1


S = TmState()


def run_tmcb(kind, *args):
    """Run the callbacks of `kind` (cell held by the caller); one that raises
    is logged and the others still run (src/modules/tm/t_hooks.c
    run_trans_callbacks)."""
    for owner, fn in S.cbs[kind].items():
        try:
            fn(*args)
        except Exception as e:
            log.err(MOD, f"{owner}: transaction callback failed: {e!r}")


def now():
    return time.monotonic()


def coarse(t):
    """t rounded up to the next TICK boundary (wait timers and fr probes)."""
    return -(-t // TICK) * TICK


def claim(index, label):
    """This process now works on transaction (index, label)."""
    if S.mine > 0:
        S.claims[S.mine] = (index << 32) | label


def unclaim():
    if S.mine > 0:
        S.claims[S.mine] = 0


def insert_claimed(key, payload, deadline, headroom=0):
    """S.table.insert with this process's claim on the new transaction written
    before its slot is linked (the payload runs under the bucket lock, just
    before): from the moment another process can see the transaction, a death
    of ours is answered by our replacement (tm/mod.py child_init). Claimed
    after insert returned, a receiver killed in between left a suspended
    INVITE with no owner, no timer and no reply, its retransmissions absorbed
    with the 100. A claim on a record that was never linked finds nothing to
    abandon. Raises what insert raises, with the claim undone."""
    def claimed(index, label):
        claim(index, label)
        return payload(index, label) if callable(payload) else payload
    try:
        return S.table.insert(key, claimed, deadline, headroom)
    except BaseException:
        unclaim()
        raise


def left_claim():
    """What the dead process of this slot was working on: (index, label) or None."""
    if S.mine <= 0 or not S.claims[S.mine]:
        return None
    v = S.claims[S.mine]
    return v >> 32, v & 0xFFFFFFFF


def hard_deadline(cell):
    """The sweep frees anything past this, whatever was lost on the way."""
    return cell.eol + (S.wt_ms + 64 * S.t1) / 1000.0 + 5.0


def sock_addr(proc, sock):
    """(ip, port) of our socket `sock`: what we put in Via and send from."""
    a = S.addrs.get(sock)
    if a is None:
        try:
            a = proc.sockets[sock].getsockname()[:2]
        except (IndexError, OSError, AttributeError):
            a = ("127.0.0.1", 5060)
        S.addrs[sock] = a
    return a


def sock_proto(sock):
    """The transport of our socket `sock` ("udp", "tcp"): that of a request it received."""
    addrs = getattr(S.script, "sock_addrs", None)
    return addrs[sock][0] if addrs and 0 <= sock < len(addrs) else "udp"


# ---- what a locked section leaves behind (Handle.release calls flush) ---------
def flush(h, locked=False):
    """Send what a locked section queued (called by Handle.release with the
    lock still held), then, once it is dropped, arm its timers: arming takes
    the timer mailbox's lock, never while a transaction lock is held."""
    if h.out:
        out, h.out = h.out, []
        proc = S.proc
        if proc is not None:
            for data, addr, sock in out:
                proc.send(data, addr, sock)
    if locked:
        return
    if h.timers:
        entries, h.timers = h.timers, []
        arm(entries)


def arm(entries):
    """Wait entries, fr probes and first retransmissions (interval T1) go to
    their delay ring (one short lock, no frame), the rest, and what a full
    ring refuses, to the timer feed. An entry due before the timer process
    means to wake (a T1 below its poll interval) nudges it."""
    rings = S.rings
    if rings:
        t1, rest = S.t1, []
        for e in entries:
            k = e[0]
            if ((k == K_WAIT or k == K_FR and e[5] == PROBE or k == K_RETR and e[5] == t1)
                    and rings[k].put(e[1], e[2], e[3], e[4], e[5])):
                S.timers.nudge(e[1])
            else:
                rest.append(e)
        if not rest:
            return
        entries = rest
    if S.timers.arm(entries) < 0:
        log.err(MOD, f"cannot arm {len(entries)} tm timer(s): the timer feed refused them "
                     f"({S.timers.cap} pending, or its mailbox full)")


# ---- arming (any process, lock held: the entries leave when it is dropped) -----
def arm_retr(h, bno, interval_ms):
    h.timers.append([K_RETR, now() + interval_ms / 1000.0, h.index, h.label, bno, interval_ms])


def arm_fr(h, cell, bno, deadline):
    """The branch's fr deadline is `deadline`; the entry armed for it is a
    probe FR_PROBE s ahead when the deadline is further off (tm/timer.py
    on_timer re-arms it at the deadline if the branch still waits)."""
    cell.branches[bno][BR_FR] = deadline    # the fr timer this entry stands for
    h.dirty = True
    probe = coarse(now() + FR_PROBE)
    if probe < deadline:
        h.timers.append([K_FR, probe, h.index, h.label, bno, PROBE])
    else:
        h.timers.append([K_FR, deadline, h.index, h.label, bno, 0])


def arm_rpl_retr(h, cell):
    t = now()
    h.timers.append([K_RPL, t + S.t1 / 1000.0, h.index, h.label, int(t * 1000), S.t1])


def arm_wait(h, cell):
    if cell.flags & F_WAIT:
        return
    S.cnt[S.st.waiting] += 1          # t_funcs.c put_on_wait: t_stats_wait()
    cell.flags |= F_WAIT
    h.dirty = True
    h.timers.append([K_WAIT, coarse(now() + S.wt_ms / 1000.0), h.index, h.label, 0, 0])
