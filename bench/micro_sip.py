"""Micro benchmark of the SIP message layer: µs per message, one core.

Runs in: a developer's shell (`python -m bench.micro_sip [--json FILE] [--n N]`).

Cases are what a receiver does per datagram: the eager parse_msg alone, then
parse plus the first access to the fields tm and sl always read (top Via
branch, CSeq, Call-ID, From tag), then a stateless reply built on top, then
the receiver's whole handle() for the bench's stateless cfg (syscalls aside);
and, for the async task path, SIPp's own OPTIONS parsed and what a task worker
does to answer it (parse again, To-tag, build_reply: tm's reply_cell).
Best of several repeats (the least disturbed run), as timeit advises, timed
with this process's CPU clock so other load on a shared machine inflates the
figures less than wall time would.
"""
import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
import timeit

from asyncd.cfg.compiler import compile_cfg
from asyncd.sip import build_reply, parse_msg, reply_addr, stable_to_tag
from workers.receiver import Receiver

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK74bf9;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: \"Alice\" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com;transport=udp>\r\n"
    b"User-Agent: SIPp/3.6.1\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE\r\n"
    b"Supported: replaces, timer\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 127\r\n"
    b"\r\n"
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\ns=-\r\n"
    b"c=IN IP4 192.0.2.101\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0\r\n")

# what SIPp's OPTIONS scenario (tests/sipp) sends
OPTIONS = (
    b"OPTIONS sip:service@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-12345-1-0\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=12345SIPpTag001\r\n"
    b"To: service <sip:service@127.0.0.1:5060>\r\n"
    b"Call-ID: 1-12345@127.0.0.1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Contact: sip:sipp@127.0.0.1:5061\r\n"
    b"Max-Forwards: 70\r\n"
    b"Subject: Performance Test\r\n"
    b"Content-Length: 0\r\n\r\n")

# what the bench's SIPp sends (bench/scenarios/options_uac.xml): rport, no display names
SIPP_OPTIONS = (
    b"OPTIONS sip:service@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-1-0;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:sipp@127.0.0.1:5061>;tag=4242SIPpTag001\r\n"
    b"To: <sip:service@127.0.0.1:5060>\r\n"
    b"Call-ID: 1-4242@127.0.0.1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Contact: <sip:sipp@127.0.0.1:5061>\r\n"
    b"Accept: application/sdp\r\n"
    b"Content-Length: 0\r\n\r\n")

REPLY = (
    b"SIP/2.0 180 Ringing\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKp1\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.101\r\n"
    b"From: \"Alice\" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=8321234356\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\n"
    b"Content-Length: 0\r\n\r\n")

SRC = ("192.0.2.101", 5060)


def first_access(buf):
    m = parse_msg(buf, SRC)
    m.via1.branch, m.cseq_num, m.cseq_method, m.callid, m.from_tag
    return m


def sl_reply(buf):
    m = first_access(buf)
    build_reply(m, 200, "OK")
    reply_addr(m)


def task_reply(buf):
    """What an async task worker does to answer a stored request (tm reply_cell after
    rebuild_request): parse it again, the To-tag, the 200."""
    m = parse_msg(buf, SIPP, ("127.0.0.1", 5060), 0, "udp")
    build_reply(m, 200, "OK", to_tag=m.to_tag or stable_to_tag(m))


def sl_only(buf):
    """What the stateless path itself needs: no field read beyond what sl reads."""
    m = parse_msg(buf, SIPP)
    build_reply(m, 200, "OK", server=_SERVER)
    reply_addr(m)


SIPP = ("127.0.0.1", 5061)  # OPTIONS's sender: its Via sent-by is the source address
_SERVER = "asyncd (0.1 (x86_64/linux))"


def receiver_case():
    """Receiver.handle on the bench's stateless cfg (sl_send_reply 200), the send
    stubbed out: everything a receiver does per datagram except the two syscalls."""
    script = compile_cfg(text='loadmodule "sl.so"\nloadmodule "pv.so"\n'
                              'request_route {\n sl_send_reply("200", "OK");\n exit;\n}\n')
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    class Proc:
        stopping = False
        index = 1
        sockets = [sock]
        sent = 0

        def send(self, data, dest, s):
            Proc.sent += 1
            return True
    proc = Proc()
    proc.script = script
    script.init_modules()
    proc.cnt = script.stats.row(1)      # a private int64 row: what a server row costs, no shm
    script.child_init_modules(proc, 1)
    handle = Receiver(proc, 0).handle
    handle(OPTIONS, SIPP)
    if Proc.sent != 1:
        raise RuntimeError("the stateless cfg did not reply")
    return lambda: handle(OPTIONS, SIPP)


CASES = [
    ("parse_msg INVITE (eager pass only)", lambda: parse_msg(INVITE, SRC)),
    ("parse_msg INVITE + Via/CSeq/Call-ID/From-tag", lambda: first_access(INVITE)),
    ("parse_msg OPTIONS + Via/CSeq/Call-ID/From-tag", lambda: first_access(OPTIONS)),
    ("parse_msg 180 reply + Via/CSeq/Call-ID/From-tag", lambda: first_access(REPLY)),
    ("SIPp OPTIONS (options_uac.xml): parse_msg", lambda: parse_msg(SIPP_OPTIONS, SIPP)),
    ("SIPp OPTIONS: task worker parse + To-tag + build_reply 200", lambda: task_reply(SIPP_OPTIONS)),
    ("OPTIONS: parse + fields + build_reply 200 + reply_addr", lambda: sl_reply(OPTIONS)),
    ("OPTIONS: parse + build_reply 200 + reply_addr (sl only)", lambda: sl_only(OPTIONS)),
    ("OPTIONS: receiver handle(), stateless cfg, send stubbed", None),
    ("INVITE: full validate() of every core header", lambda: parse_msg(INVITE, SRC).validate()),
]


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run(n, repeat):
    rows = []
    for name, fn in CASES:
        if fn is None:
            fn = receiver_case()
        best = min(timeit.repeat(fn, number=n, repeat=repeat, timer=time.process_time)) / n
        rows.append({"case": name, "us_per_msg": round(best * 1e6, 2), "msgs_per_s": int(1 / best)})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="messages per repeat")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", help="also write results to this file")
    args = ap.parse_args(argv)
    rows = run(args.n, args.repeat)
    width = max(len(r["case"]) for r in rows)
    print("%-*s  %10s  %10s" % (width, "case", "CPU µs/msg", "msgs/s"))
    for r in rows:
        print("%-*s  %10.2f  %10d" % (width, r["case"], r["us_per_msg"], r["msgs_per_s"]))
    meta = {"python": sys.version.split()[0], "machine": platform.machine(),
            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "commit": commit(), "n": args.n, "repeat": args.repeat}
    print("python %(python)s, %(cpus)s cpus, commit %(commit)s" % meta)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
