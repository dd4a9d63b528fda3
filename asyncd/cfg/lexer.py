"""Tokenizer for kamailio.cfg text (one source file or one define body).

Runs in: main process (cfg compilation).

Kamailio's own lexer (src/core/cfg.lex) mixes preprocessing, comments and
tokens in one state machine; we keep the same split of responsibilities but
hand the `#!` directives to asyncd.cfg.preprocess, which drives this lexer.
Every token carries file:line:col so every later error can name it.
"""
import re

from asyncd.core.errors import CfgError

# token kinds
ID, INT, STR, PV, IPV4, IPV6, OP, DIR, EOF = "ID", "INT", "STR", "PV", "IPV4", "IPV6", "OP", "DIR", "EOF"

# longest first: the alternation is tried in order
_OPS = ("==", "!=", "=~", "!~", "<=", ">=", "&&", "||", "<<", ">>", ":=", "+=",
        "=", "<", ">", "!", "+", "-", "*", "/", "%", "|", "&", "^", "~",
        "(", ")", "{", "}", "[", "]", ",", ";", ":", ".")
_TOKEN_RE = re.compile(
    r"(?P<ws>[ \t\r\f\v]+)"
    r"|(?P<ipv4>\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\w.]))"
    r"|(?P<hex>0[xX][0-9a-fA-F]+(?![\w]))"
    r"|(?P<int>\d+(?![A-Za-z_]))"
    r"|(?P<id>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<ipv6>\[[0-9a-fA-F.]*:[0-9a-fA-F:.]*\])"
    r"|(?P<op>" + "|".join(re.escape(o) for o in _OPS) + r")")
# `!!` starts a directive only before a directive name (cfg.lex PREP_START rules);
# elsewhere it is two `!` operators
_BANG_DIR_RE = re.compile(r"!!(define|trydef|redefine|undef|ifdef|ifndef|else|endif|subst|substdef|"
                          r"substdefs|include_file|import_file|defenv|defenvs|trydefenv|"
                          r"KAMAILIO|SER|ALL|MAXCOMPAT|OPENSER)\b")
_PV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "'": "'", "0": "\0"}
_PAIRS = {"(": ")", "[": "]", "{": "}"}


class Token:
    __slots__ = ("kind", "value", "file", "line", "col", "eline", "ecol")

    def __init__(self, kind, value, file, line, col):
        self.kind = kind
        self.value = value
        self.file = file
        self.line = line
        self.col = col
        self.eline = line
        self.ecol = col

    def is_op(self, text):
        return self.kind == OP and self.value == text

    def is_id(self, text):
        return self.kind == ID and self.value == text

    def __repr__(self):
        return f"Token({self.kind},{self.value!r},{self.line}:{self.col})"


class Lexer:
    """Yields tokens of one text. Directives come out as DIR tokens whose value
    is the directive line without the leading `#!` (continuation lines joined)."""

    def __init__(self, text, file="<cfg>", line=1, col=1):
        self.text = text
        self.file = file
        self.pos = 0
        self.line = line
        self.line_start = -(col - 1)   # so that col of pos 0 is `col`
        self.first_line = line

    def error(self, msg, line=None, col=None):
        raise CfgError(msg, self.file, self.line if line is None else line,
                       self.col if col is None else col)

    @property
    def col(self):
        return self.pos - self.line_start + 1

    def _newline(self, at):
        self.line += 1
        self.line_start = at + 1

    def next_token(self):
        tok = self._next()
        tok.eline, tok.ecol = self.line, self.col
        return tok

    def _next(self):
        text = self.text
        n = len(text)
        while True:
            pos = self.pos
            if pos >= n:
                return Token(EOF, None, self.file, self.line, self.col)
            c = text[pos]
            if c == "\n":
                self._newline(pos)
                self.pos = pos + 1
                continue
            if c in " \t\r\f\v":
                self.pos = pos + 1
                continue
            if c == "#":
                if text.startswith("#!", pos):
                    return self._directive()
                self._skip_line()
                continue
            if c == "!" and text.startswith("!!", pos) and _BANG_DIR_RE.match(text, pos):
                return self._directive()
            if c == "/" and text.startswith("//", pos):
                self._skip_line()
                continue
            if c == "/" and text.startswith("/*", pos):
                self._block_comment()
                continue
            break
        line, col = self.line, self.col
        if c == '"' or c == "'":
            return Token(STR, self._string(c), self.file, line, col)
        if c == "$":
            return Token(PV, self._pv(), self.file, line, col)
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            self.error(f"unexpected character {c!r}")
        self.pos = m.end()
        kind = m.lastgroup
        val = m.group()
        if kind == "id":
            return Token(ID, val, self.file, line, col)
        if kind == "int":
            # a leading 0 means octal, as Kamailio's OCTNUMBER (src/core/cfg.lex): mode=0600
            octal = len(val) > 1 and val[0] == "0" and all(ch in "01234567" for ch in val)
            return Token(INT, int(val, 8) if octal else int(val), self.file, line, col)
        if kind == "hex":
            return Token(INT, int(val, 16), self.file, line, col)
        if kind == "ipv4":
            return Token(IPV4, val, self.file, line, col)
        if kind == "ipv6":
            return Token(IPV6, val, self.file, line, col)
        return Token(OP, val, self.file, line, col)

    # -- pieces ------------------------------------------------------------
    def _skip_line(self):
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end

    def _block_comment(self):
        line, col = self.line, self.col
        end = self.text.find("*/", self.pos + 2)
        if end < 0:
            self.error("unterminated /* comment", line, col)
        for i in range(self.pos, end):
            if self.text[i] == "\n":
                self._newline(i)
        self.pos = end + 2

    def _directive(self):
        """`#!name rest` up to end of line; a trailing backslash continues it."""
        line, col = self.line, self.col
        text = self.text
        parts = []
        p = self.pos + 2
        while True:
            end = text.find("\n", p)
            if end < 0:
                end = len(text)
            chunk = text[p:end]
            if chunk.rstrip("\r").endswith("\\") and end < len(text):
                parts.append(chunk.rstrip("\r")[:-1])
                self._newline(end)
                p = end + 1
                continue
            parts.append(chunk.rstrip("\r"))
            self.pos = end
            break
        return Token(DIR, "\n".join(parts), self.file, line, col)

    def skip_to_directive(self):
        """Inside a false #!ifdef branch: skip whole lines until one starts with
        a directive (Kamailio's IFDEF_SKIP state ignores everything else)."""
        text = self.text
        while self.pos < len(text):
            end = text.find("\n", self.pos)
            if end < 0:
                end = len(text)
            seg = text[self.pos:end]
            stripped = seg.lstrip(" \t")
            if stripped.startswith("#!") or _BANG_DIR_RE.match(stripped):
                self.pos += len(seg) - len(stripped)
                return self._directive()
            self.pos = end
            if end < len(text):
                self._newline(end)
                self.pos = end + 1
        return Token(EOF, None, self.file, self.line, self.col)

    def _string(self, quote):
        text = self.text
        line, col = self.line, self.col
        p = self.pos + 1
        out = []
        n = len(text)
        while True:
            q = p
            while q < n and text[q] != quote and text[q] != "\\" and text[q] != "\n":
                q += 1
            out.append(text[p:q])
            if q >= n:
                self.error("unterminated string", line, col)
            ch = text[q]
            if ch == quote:
                self.pos = q + 1
                return "".join(out)
            if ch == "\n":
                # Kamailio accepts multi-line strings; keep the newline
                out.append("\n")
                self._newline(q)
                p = q + 1
                continue
            # backslash escape
            if q + 1 >= n:
                self.error("unterminated string", line, col)
            e = text[q + 1]
            if e == "\n":           # line continuation inside a string
                self._newline(q + 1)
                p = q + 2
                continue
            out.append(_ESCAPES.get(e, "\\" + e))
            p = q + 2

    def _pv(self):
        """Raw text of a pseudo-variable: `$name`, `$name(inner)`, `$name(inner)[i]`,
        or `$(name(inner)[i]{tr}...)`. Parsed later by asyncd.cfg.pvcore."""
        text = self.text
        start = self.pos
        p = start + 1
        if p < len(text) and text[p] == "(":
            p = self._balanced(p)
            self.pos = p
            return text[start:p]
        m = _PV_NAME_RE.match(text, p)
        if m is None:
            self.error("malformed pseudo-variable: '$' without a name")
        p = m.end()
        if p < len(text) and text[p] == "(":
            p = self._balanced(p)
        if p < len(text) and text[p] == "[":
            p = self._balanced(p)
        self.pos = p
        return text[start:p]

    def _balanced(self, p):
        """Index after the bracket group opening at p (nesting and quotes aware)."""
        text = self.text
        stack = [_PAIRS[text[p]]]
        q = p + 1
        n = len(text)
        while q < n and stack:
            ch = text[q]
            if ch == "\n":
                break
            if ch in _PAIRS:
                stack.append(_PAIRS[ch])
            elif ch == stack[-1]:
                stack.pop()
            elif ch in ")]}":
                break
            elif ch == '"' or ch == "'":
                e = text.find(ch, q + 1)
                if e < 0 or "\n" in text[q:e]:
                    break
                q = e
            q += 1
        if stack:
            self.error(f"malformed pseudo-variable: unbalanced '{text[p]}'", col=self.col)
        return q


def tokenize(text, file="<cfg>"):
    """All tokens of a text, directives included (for tests and tools)."""
    lx = Lexer(text, file)
    out = []
    while True:
        t = lx.next_token()
        out.append(t)
        if t.kind == EOF:
            return out
