"""The timer service's feed: how any process arms a timer entry in a timer
process (workers/timer.py), and what that process reads.

Runs in: main (a feed is made by a module's mod_init, before fork), any
producer (arm: udp receivers, task workers, timer processes re-arming), and
the consumers, the processes of the timer row that owns the feed (bind,
recover, take, publish, awake, done).

A feed has `consumers` timer processes (tm's `timer`: 1; the ASYNC module's
`ASYNC MOD TIMER`: modparam workers; `ASYNC MOD MS TIMER`: 1). Each has a
shared-memory Mailbox (mailbox.py), which also counts its entries, a
Journal (journal.py) where the consumer keeps every entry it took until it
ran, and a ZeroMQ PULL endpoint `<name>-<i>` that carries only wake-ups
(empty frames) for entries due before the consumer's published wake-up.
With a steady delay (fr_timer, async_sleep(1) at any rate) new entries are
always due after the heap's head: arming sends nothing over ZeroMQ.

Every accepted entry lives in shared memory (mailbox, then journal) until
it ran or was skipped, so a consumer killed at any instant is replaced by
one that loses nothing (journal.py says how, and what a death may repeat).

An entry is `[kind, due, ...]` (due on the monotonic clock, which every
process shares, so queueing delay never shifts a timer); one frame carries
the entries one producer arms at once (tm arms 1-3 per locked section). A
frame longer than a mailbox slot (FRAME_MAX bytes) is split into several,
queued all or none. With several consumers a frame goes to the one with the
fewest pending entries (Kamailio's ASYNC MOD TIMER processes share one ring
instead; the spread keeps each heap small). `cap` bounds the pending
entries per consumer (and sizes its journal): a full consumer, a full
mailbox or an entry no slot can hold is refused (arm() -> -1) and counted,
so the caller can answer instead of waiting (docs/architecture.md, "Bad
input"). Every accepted entry is accounted for: accepted == run + skipped +
pending.
"""
import zmq

from asyncd.core import log
from asyncd.ipc import Pushers, codec
from asyncd.ipc.journal import Journal
from asyncd.ipc.mailbox import FRAME_MAX, FULL, STORED_WAKE, Mailbox
from shm.locks import robust_lock

MOD = "core"
GROUP = 15              # entries in a split frame: msgpack's one-byte array header


class TimerFeed:
    """Create in main before fork; every process uses the inherited object."""

    def __init__(self, name, consumers, cap, slots=4096, rundir=None):
        if int(cap) <= 0:
            raise ValueError(f"timer feed {name}: cap must be > 0 (it sizes the journal)")
        self.name = name                  # short: it names the endpoint files
        self.n = int(consumers)
        self.cap = int(cap)
        locks = robust_lock(f"timer feed {name}", max(self.n, 1))
        locks.on_recover = self._repair
        self.boxes = [Mailbox(slots, locks, i) for i in range(max(self.n, 0))]
        self.journals = [Journal(b, self.cap) for b in self.boxes]
        self.pushers = Pushers(name, rundir)

    # ---- producers -------------------------------------------------------
    def arm(self, entries):
        """Hand `entries` ([kind, due, ...] each) to a consumer: 0, or -1 when
        the feed has no consumer or refused them (counted)."""
        if self.n <= 0:
            return -1
        i = self._pick()
        box = self.boxes[i]
        due = min([e[1] for e in entries]) if len(entries) > 1 else entries[0][1]
        frame = codec.pack(entries)
        if len(frame) <= FRAME_MAX and len(entries) <= GROUP:
            r = box.put(frame, due, len(entries), self.cap)
        else:
            frames, counts = _split(entries)
            if not frames:
                box.refuse()
                log.err(MOD, f"timer feed {self.name}: an entry longer than {FRAME_MAX - 1} bytes")
                return -1
            r = box.put_all(frames, counts, due, self.cap)
        if r == FULL:
            return -1
        if r == STORED_WAKE:
            self._wake(i)
        return 0

    def nudge(self, due, i=0):
        """An entry due at `due` went to a delay ring consumer `i` drains
        (delay_ring.py): wake it when it sleeps past that."""
        if 0 <= i < self.n and self.boxes[i].sleeps_past(due):
            self._wake(i)

    def _pick(self):
        boxes = self.boxes
        if len(boxes) == 1:
            return 0
        return min(range(len(boxes)), key=lambda k: boxes[k].pending())

    def _wake(self, i):
        try:
            self.pushers.get(i).send(b"", zmq.NOBLOCK, copy=False)
        except Exception as e:      # a ZMQError, or a context gone at exit
            # the entry is in shared memory: a lost wake-up only delays it, and a
            # consumer being replaced drains everything when it starts
            log.dbg(MOD, f"timer feed {self.name}: cannot wake consumer {i}: {e!r}")

    def _repair(self, i):
        """Mailbox i's lock was taken over from a dead process."""
        self.boxes[i].repair()

    def connect_all(self):
        """Open this process's PUSH sockets now (after fork), not on the first arm."""
        for i in range(self.n):
            self.pushers.get(i)

    # ---- consumer i --------------------------------------------------------
    def bind(self, i):
        return self.pushers.bind(i)

    def recover(self, i):
        """At start: ([(slot, frame, mask)] a predecessor left in the journal,
        whether there was one); see journal.py. A producer or predecessor
        that died holding the mailbox lock is taken over first (~50 ms)."""
        self.boxes[i].settle()
        return self.journals[i].recover()

    def take(self, i):
        """Journal the frames waiting in the mailbox: [(slot, frame, mask)]."""
        return self.journals[i].take()

    def waiting(self, i):
        return self.boxes[i].waiting() > 0

    def publish(self, i, wake):
        return self.boxes[i].publish(wake)

    def awake(self, i):
        self.boxes[i].awake()

    def done(self, i, slot, j, skipped=False):
        """Entry j of journal slot `slot` ran, was skipped, or was handed off."""
        self.journals[i].finish(slot, j, skipped)

    # ---- introspection -----------------------------------------------------
    def stats(self):
        out = {"accepted": 0, "rejected": 0, "run": 0, "skipped": 0, "pending": 0}
        for b in self.boxes:
            for k, v in b.stats().items():
                out[k] += v
        return out


def _split(entries):
    """(frames, counts) of at most FRAME_MAX bytes and GROUP entries each, in
    order; (None, None) when one entry alone does not fit a frame."""
    frames, counts, group, size = [], [], [], 1
    for e in entries:
        b = codec.pack(e)
        if len(b) + 1 > FRAME_MAX:
            return None, None
        if group and (size + len(b) > FRAME_MAX or len(group) == GROUP):
            frames.append(bytes([0x90 | len(group)]) + b"".join(group))    # msgpack fixarray
            counts.append(len(group))
            group, size = [], 1
        group.append(b)
        size += len(b)
    frames.append(bytes([0x90 | len(group)]) + b"".join(group))
    counts.append(len(group))
    return frames, counts
