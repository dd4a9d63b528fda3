"""TCP receiver: run the script on the messages tcp main framed.

Runs in: `tcp receiver (generic) child=<i>` (tcp_children of them).

Each receiver reads its own channel from the `tcp main process`
(asyncd.ipc.tcp): one datagram per complete SIP message, with the
connection id, the listen socket it came on and the peer address. From
there it is the udp receiver's path (workers/receiver.py `Receiver`): the
same hooks, routes, 400 for what does not parse, counters; `$proto` is
`tcp` and `$conid` the connection. Replies and forwarded requests leave
through `proc.send`, which hands TCP sends to tcp main. An empty message
is tcp main's drain marker for a connection it is closing: every message
before it has run and its replies are on their way, so the answer is
OP_CLOSE (asyncd.ipc.tcp).

A message waits in the kernel channel, held open by main, until this
process reads it: a replacement forked for a dead receiver reads what
its predecessor had not (the message being run when it died is lost, as a
UDP datagram would be; a transaction it held gets its reply from tm).
"""
from asyncd.core import log
from asyncd.ipc.tcp import CHAN_DGRAM, OP_CLOSE, pack_tx, unpack_rx
from workers.receiver import Receiver

MOD = "core"


class TcpReceiver(Receiver):
    proto = "tcp"

    def __init__(self, proc, plan, instance):
        first = min(plan.listen) if plan.listen else 0
        super().__init__(proc, first)
        self.chan = plan.rx[instance][1]
        self.tx = plan.tx_w
        self.locals = {i: s.getsockname()[:2] for i, s in plan.listen.items()}

    def read(self):
        """The next message from tcp main's channel as (data, src), with the connection
        id, listen socket and local address set for handle(); None for a drain marker
        (answered here) or a frame that cannot be read."""
        buf = self.chan.recv(CHAN_DGRAM)
        try:
            conid, sock, src, data = unpack_rx(buf)
        except Exception as e:  # noqa: BLE001 - a frame we cannot read is dropped
            log.err(MOD, f"tcp receiver: bad frame from tcp main: {e!r}")
            return None
        if not data:
            self.drained(conid, sock, src)
            return None
        self.conid = conid
        self.sock_index = sock
        self.local = self.locals.get(sock, self.local)
        return data, src

    def drained(self, conid, sock, src):
        try:
            self.tx.send(pack_tx(OP_CLOSE, conid, sock, src[0], src[1]))
        except OSError as e:   # tcp main closes it at its deadline anyway
            log.err(MOD, f"tcp receiver: cannot ask tcp main to close connection {conid}: {e}")


def run(proc, row, instance):
    """The loop of a tcp receiver row's process: the row's handlers are the TcpPlan."""
    TcpReceiver(proc, row.handlers, instance).loop()
