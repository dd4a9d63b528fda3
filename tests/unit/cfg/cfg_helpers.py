"""Helpers for the cfg compiler tests: compile a cfg text, build a parsed
SIP request, run a route in-process (no sockets)."""
from asyncd.cfg.compiler import compile_cfg
from asyncd.core.context import ProcState

INVITE = ("INVITE sip:bob@example.com:5080;transport=udp SIP/2.0\r\n"
          "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds\r\n"
          "Max-Forwards: 70\r\n"
          "To: Bob <sip:bob@example.com>\r\n"
          "From: \"Alice A\" <sip:alice@atlanta.com>;tag=1928301774\r\n"
          "Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n"
          "CSeq: 314159 INVITE\r\n"
          "Contact: <sip:alice@pc33.atlanta.com>\r\n"
          "User-Agent: tester/1.0\r\n"
          "X-Multi: one\r\n"
          "X-Multi: two\r\n"
          "Content-Type: application/sdp\r\n"
          "Content-Length: 4\r\n\r\nv=0\n")


def make_msg(text=INVITE, src=("10.0.0.1", 5060), dst=("127.0.0.1", 5060)):
    from asyncd.sip import parse_msg
    return parse_msg(text.encode(), src, dst)


HEAD = "\n".join(f'loadmodule "{m}.so"' for m in
                 ("sl", "pv", "xlog", "textops", "siputils", "maxfwd", "cfgutils")) + "\n"


class Runner:
    def __init__(self, text, defines=None, head=True):
        self.script = compile_cfg(text=(HEAD if head else "") + text, defines=defines,
                                  filename="test.cfg")
        self.proc = ProcState(self.script)

    def run(self, msg=None, route=None):
        msg = msg if msg is not None else make_msg()
        ctx = self.script.new_ctx(msg, self.proc)
        rc = self.script.run_request_route(ctx) if route is None else self.script.run_route(route, ctx)
        return ctx, rc

    @property
    def vars(self):
        return self.proc.vars


