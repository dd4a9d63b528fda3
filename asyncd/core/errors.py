"""Error types shared by the compiler and the runtime.

Runs in: main process (cfg errors), every process (runtime errors).
"""


class CfgError(Exception):
    """A cfg error with its location; str() is `file:line:col: message`."""

    def __init__(self, message, file="<cfg>", line=0, col=0):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.col = col

    def __str__(self):
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class ScriptExit(Exception):
    """Raised by `exit`, `drop` and a module function returning 0: ends the whole script."""

    def __init__(self, drop=False):
        super().__init__()
        self.drop = drop
