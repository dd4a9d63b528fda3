"""A tiny UDP UAS for proxy tests: answers every request with the status in
its Request-URI user (`sip:486@...` -> 486; anything else 200) and a fixed
To tag; ACKs are swallowed.

Runs in: a thread of the pytest process.
"""
import re
import socket
import threading

_USER_RE = re.compile(rb"^[A-Z]+ sip:(\d{3})@")


class EchoUas:
    def __init__(self, host="127.0.0.1", to_tag="uastag"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.to_tag = to_tag
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
            self.sock.sendto(self._reply(data), src)

    def _reply(self, data):
        m = _USER_RE.match(data)
        code = int(m.group(1)) if m else 200
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        keep = [h for h in head[1:] if h.split(b":", 1)[0].strip().lower()
                in (b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq")]
        to = next(h for h in head[1:] if h.split(b":", 1)[0].strip().lower() in (b"to", b"t"))
        reason = b"OK" if code == 200 else b"Busy Here" if code == 486 else b"Nope"
        tail = [to + b";tag=" + self.to_tag.encode(), b"Content-Length: 0", b"", b""]
        lines = [b"SIP/2.0 %d %s" % (code, reason)] + keep + tail
        return b"\r\n".join(lines)

    def close(self):
        self._stop = True
        self._thread.join(1.0)
        self.sock.close()
