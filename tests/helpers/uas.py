"""A tiny UDP UAS for proxy tests: answers every request with the status in
its Request-URI user (`sip:486@...` -> 486; anything else 200) and a fixed
To tag; ACKs are swallowed. With ring=True an INVITE gets `180 Ringing`
first and the final reply 50 ms later (for `sip:180@...` nothing else).

Runs in: a thread of the pytest process.
"""
import re
import socket
import threading
import time

_USER_RE = re.compile(rb"^[A-Z]+ sip:(\d{3})@")


class EchoUas:
    def __init__(self, host="127.0.0.1", to_tag="uastag", ring=False):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.to_tag = to_tag
        self.ring = ring
        self.received = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                data, src = self.sock.recvfrom(65535)
            except OSError:
                continue
            self.received.append(data)
            if data.startswith(b"ACK ") or data.startswith(b"SIP/"):
                continue
            if self.ring and data.startswith(b"INVITE "):
                self.sock.sendto(self._reply(data, 180), src)
                time.sleep(0.05)        # a phone rings a while: the 180 is handled first
            final = self._reply(data)
            if not final.startswith(b"SIP/2.0 180 "):
                self.sock.sendto(final, src)

    def _reply(self, data, code=None):
        if code is None:
            m = _USER_RE.match(data)
            code = int(m.group(1)) if m else 200
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        keep = [h for h in head[1:] if h.split(b":", 1)[0].strip().lower()
                in (b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq")]
        to = next(h for h in head[1:] if h.split(b":", 1)[0].strip().lower() in (b"to", b"t"))
        reason = {200: b"OK", 180: b"Ringing", 486: b"Busy Here"}.get(code, b"Nope")
        tail = [to + b";tag=" + self.to_tag.encode(), b"Content-Length: 0", b"", b""]
        lines = [b"SIP/2.0 %d %s" % (code, reason)] + keep + tail
        return b"\r\n".join(lines)

    def close(self):
        self._stop = True
        self._thread.join(1.0)
        self.sock.close()
