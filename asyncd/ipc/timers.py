"""The timer service's feed: how any process arms a timer entry in a timer
process (workers/timer.py), and what that process reads.

Runs in: main (a feed is made by a module's mod_init, before fork), any
producer (arm: udp receivers, task workers, timer processes re-arming), and
the consumers, the processes of the timer row that owns the feed (bind,
take, publish, awake, done).

A feed has `consumers` timer processes (tm's `timer`: 1; the ASYNC module's
`ASYNC MOD TIMER`: modparam workers; `ASYNC MOD MS TIMER`: 1). Each has a
shared-memory Mailbox (mailbox.py), which also counts its entries, and a
ZeroMQ PULL endpoint `<name>-<i>` that carries wake-ups (empty frames) for
entries due before the consumer's published wake-up, and frames the mailbox
cannot hold. With a steady delay (fr_timer, async_sleep(1) at any rate) new
entries are always due after the heap's head: arming sends nothing over
ZeroMQ.

An entry is `[kind, due, ...]` (due on the monotonic clock, which every
process shares, so queueing delay never shifts a timer); one frame carries
the entries one producer arms at once (tm arms 1-3 per locked section).
With several consumers a frame goes to the one with the fewest pending
entries (Kamailio's ASYNC MOD TIMER processes share one ring instead; the
spread keeps each heap small). `cap` > 0 bounds the pending entries per
consumer: a full consumer refuses (arm() -> -1) and counts it, so the
caller can answer instead of waiting (docs/architecture.md, "Bad input").
Every accepted entry is accounted for: accepted == run + skipped + pending.
"""
import zmq

from asyncd.core import log
from asyncd.ipc import Pushers, codec
from asyncd.ipc.mailbox import FULL, OVERFLOW, STORED_WAKE, Mailbox

MOD = "core"


class TimerFeed:
    """Create in main before fork; every process uses the inherited object."""

    def __init__(self, name, consumers=1, cap=0, slots=4096, rundir=None):
        self.name = name                  # short: it names the endpoint files
        self.n = int(consumers)
        self.cap = int(cap)
        self.boxes = [Mailbox(slots) for _ in range(max(self.n, 0))]
        self.pushers = Pushers(name, rundir)

    # ---- producers -------------------------------------------------------
    def arm(self, entries):
        """Hand `entries` ([kind, due, ...] each) to a consumer: 0, or -1 when
        the feed has no consumer, the chosen one is full, or the frame could
        not be sent."""
        if self.n <= 0:
            return -1
        i = self._pick()
        frame = codec.pack(entries)
        box = self.boxes[i]
        r = box.put(frame, min(e[1] for e in entries), len(entries), self.cap)
        if r == FULL:
            return -1
        if r == OVERFLOW:
            if self._send(i, frame):
                return 0
            box.unassign(len(entries))
            return -1
        if r == STORED_WAKE:
            self._send(i, b"")       # the entry is in the mailbox: a lost wake-up only delays it
        return 0

    def _pick(self):
        boxes = self.boxes
        if len(boxes) == 1:
            return 0
        return min(range(len(boxes)), key=lambda k: boxes[k].pending())

    def _send(self, i, frame):
        try:
            self.pushers.get(i).send(frame, zmq.NOBLOCK, copy=False)
            return True
        except Exception as e:      # a ZMQError, or a context gone at exit
            log.err(MOD, f"timer feed {self.name}: cannot reach consumer {i}: {e!r}")
            return False

    def connect_all(self):
        """Open this process's PUSH sockets now (after fork), not on the first arm."""
        for i in range(self.n):
            self.pushers.get(i)

    # ---- consumer i --------------------------------------------------------
    def bind(self, i):
        return self.pushers.bind(i)

    def take(self, i):
        return self.boxes[i].take()

    def publish(self, i, wake):
        return self.boxes[i].publish(wake)

    def awake(self, i):
        self.boxes[i].awake()

    def done(self, i, skipped=False):
        self.boxes[i].done(skipped)

    # ---- introspection -----------------------------------------------------
    def stats(self):
        out = {"accepted": 0, "rejected": 0, "run": 0, "skipped": 0, "pending": 0}
        for b in self.boxes:
            for k, v in b.stats().items():
                out[k] += v
        return out
