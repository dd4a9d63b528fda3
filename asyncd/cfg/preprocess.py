"""Kamailio cfg preprocessor: `#!define` & co, `#!ifdef` nesting, includes,
`#!subst`, producing the flat token list the parser reads.

Runs in: main process (cfg compilation).

Mirrors src/core/cfg.lex + ppcfg.c: defines are replaced as whole ID tokens
(never inside quoted strings); `#!subst`/`#!substdef` rewrite quoted strings;
`#!ifdef` skipping is line based (anything, even unbalanced quotes, may sit in
a skipped branch); `include_file` resolves relative to the including file,
then to the working directory; `import_file` tolerates a missing file.
"""
import os
import re

from asyncd.core.errors import CfgError
from asyncd.cfg.lexer import Lexer, ID, STR, DIR, EOF

# what Kamailio 5.6.3 predefines (src/core/ppcfg.c, main.c), plus our own name
PREDEFINED = {"KAMAILIO": None, "KAMAILIO_5": None, "KAMAILIO_5_6": None,
              "KAMAILIO_5_6_3": None, "OS_LINUX": None, "ARCH_X86_64": None,
              "ASYNCD": None}
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_INCLUDE_DEPTH = 10
MAX_DEFINE_DEPTH = 32


class Preprocessor:
    def __init__(self, defines=None):
        self.defines = dict(PREDEFINED)
        for k, v in (defines or {}).items():
            self.defines[k] = None if v is None else str(v)
        self.substs = []            # (compiled regex, replacement, count)
        self.files = []             # every file read, for diagnostics
        self.out = []

    # -- entry points ------------------------------------------------------
    def run_text(self, text, file):
        self.files.append(file)
        eof = self._process(Lexer(text, file), os.path.dirname(os.path.abspath(file))
                            if not file.startswith("<") else os.getcwd(), 0)
        self.out.append(eof)
        return self.out

    # -- main loop -----------------------------------------------------------
    def _process(self, lx, basedir, depth):
        conds = []      # stack of [active, else_seen, parent_active, token]
        active = True
        while True:
            tok = lx.next_token() if active else lx.skip_to_directive()
            kind = tok.kind
            if kind == EOF:
                if conds:
                    t = conds[-1][3]
                    raise CfgError("missing #!endif for this #!if", t.file, t.line, t.col)
                return tok
            if kind == DIR:
                active = self._directive(tok, lx, conds, active, basedir, depth)
                continue
            if kind == ID:
                if tok.value in ("include_file", "import_file"):
                    nxt = lx.next_token()
                    if nxt.kind != STR:
                        raise CfgError(f"{tok.value} needs a quoted file name",
                                       nxt.file, nxt.line, nxt.col)
                    self._include(nxt.value, tok, basedir, depth, tok.value == "import_file")
                    continue
                if tok.value in self.defines:
                    self._expand(tok, 0)
                    continue
            elif kind == STR and self.substs:
                tok.value = self._subst(tok.value)
            self.out.append(tok)

    def _expand(self, tok, level):
        if level > MAX_DEFINE_DEPTH:
            raise CfgError(f"define '{tok.value}' expands recursively", tok.file, tok.line, tok.col)
        body = self.defines[tok.value]
        if not body:
            return
        sub = Lexer(body, tok.file, tok.line, tok.col)
        while True:
            t = sub.next_token()
            if t.kind == EOF:
                return
            # every token of the body reports the place where the define was used
            t.line, t.col = tok.line, tok.col
            if t.kind == ID and t.value in self.defines and t.value != tok.value:
                self._expand(t, level + 1)
            elif t.kind == STR and self.substs:
                t.value = self._subst(t.value)
                self.out.append(t)
            elif t.kind == DIR:
                raise CfgError("directive inside a define body", tok.file, tok.line, tok.col)
            else:
                self.out.append(t)

    # -- directives ----------------------------------------------------------
    def _directive(self, tok, lx, conds, active, basedir, depth):
        text = tok.value.strip()
        m = re.match(r"([A-Za-z_]+)\s*(.*)\Z", text, re.S)
        if not m:
            raise CfgError(f"malformed preprocessor directive '#!{text}'", tok.file, tok.line, tok.col)
        name, rest = m.group(1), m.group(2).strip()
        if name in ("ifdef", "ifndef"):
            ident = self._ident(rest, tok, name)
            cond = (ident in self.defines) == (name == "ifdef")
            conds.append([cond, False, active, tok])
            return active and cond
        if name == "else":
            if not conds:
                raise CfgError("#!else without #!ifdef", tok.file, tok.line, tok.col)
            c = conds[-1]
            if c[1]:
                raise CfgError("second #!else for the same #!ifdef", tok.file, tok.line, tok.col)
            c[1] = True
            c[0] = not c[0]
            return c[2] and c[0]
        if name == "endif":
            if not conds:
                raise CfgError("#!endif without #!ifdef", tok.file, tok.line, tok.col)
            c = conds.pop()
            return c[2]
        if not active:
            return False
        if name in ("KAMAILIO", "SER", "ALL", "MAXCOMPAT", "OPENSER"):
            return True
        if name in ("define", "trydef", "redefine"):
            parts = rest.split(None, 1)
            ident = self._ident(parts[0] if parts else "", tok, name)
            value = parts[1].strip() if len(parts) > 1 else None
            if name == "define" and ident in self.defines and ident not in PREDEFINED:
                raise CfgError(f"'{ident}' is already defined", tok.file, tok.line, tok.col)
            if name == "trydef" and ident in self.defines:
                return True
            self.defines[ident] = value
            return True
        if name == "undef":
            self.defines.pop(self._ident(rest, tok, name), None)
            return True
        if name in ("defenv", "trydefenv", "defenvs"):
            ident, _, env = rest.partition("=")
            ident = self._ident(ident.strip(), tok, name)
            env = env.strip() or ident
            if env in os.environ:
                v = os.environ[env]
                self.defines[ident] = repr(v).replace("'", '"') if name == "defenvs" else v
            elif name == "defenv":
                raise CfgError(f"environment variable '{env}' is not set", tok.file, tok.line, tok.col)
            return True
        if name in ("subst", "substdef", "substdefs"):
            self._add_subst(rest, tok, name)
            return True
        if name in ("include_file", "import_file"):
            fname = _unquote(rest)
            if fname is None:
                raise CfgError(f"#!{name} needs a quoted file name", tok.file, tok.line, tok.col)
            self._include(fname, tok, basedir, depth, name == "import_file")
            return True
        raise CfgError(f"unknown preprocessor directive '#!{name}'", tok.file, tok.line, tok.col)

    def _ident(self, text, tok, directive):
        if not _NAME_RE.match(text or ""):
            raise CfgError(f"#!{directive} needs a name, got '{text}'", tok.file, tok.line, tok.col)
        return text

    def _add_subst(self, rest, tok, name):
        spec = _unquote(rest)
        if not spec or len(spec) < 4:
            raise CfgError(f"malformed #!{name} expression", tok.file, tok.line, tok.col)
        delim = spec[0]
        parts = re.split(r"(?<!\\)" + re.escape(delim), spec[1:])
        if len(parts) != 3:
            raise CfgError(f"malformed #!{name} expression '{spec}'", tok.file, tok.line, tok.col)
        pattern, repl, flags = parts
        reflags = re.I if "i" in flags else 0
        try:
            rx = re.compile(pattern.replace("\\" + delim, delim), reflags)
        except re.error as e:
            raise CfgError(f"bad regular expression in #!{name}: {e}", tok.file, tok.line, tok.col)
        self.substs.append((rx, repl.replace("\\" + delim, delim), 0 if "g" in flags else 1))
        if name != "subst":
            ident = self._ident(pattern, tok, name)
            self.defines[ident] = repr(repl).replace("'", '"') if name == "substdefs" else repl

    def _subst(self, value):
        for rx, repl, count in self.substs:
            try:
                value = rx.sub(repl, value, count=count)
            except (re.error, IndexError):
                pass
        return value

    def _include(self, fname, tok, basedir, depth, optional):
        if depth >= MAX_INCLUDE_DEPTH:
            raise CfgError("too many nested includes", tok.file, tok.line, tok.col)
        cands = [fname] if os.path.isabs(fname) else [os.path.join(basedir, fname), fname]
        for path in cands:
            if os.path.isfile(path):
                break
        else:
            if optional:
                return
            raise CfgError(f"cannot find included file '{fname}'", tok.file, tok.line, tok.col)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            raise CfgError(f"cannot read included file '{fname}': {e.strerror}",
                           tok.file, tok.line, tok.col)
        self.files.append(path)
        self._process(Lexer(text, path), os.path.dirname(os.path.abspath(path)), depth + 1)


def _unquote(text):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return None


def preprocess(text, file="<cfg>", defines=None):
    """Token list of a whole cfg (directives applied, defines expanded)."""
    return Preprocessor(defines).run_text(text, file)
