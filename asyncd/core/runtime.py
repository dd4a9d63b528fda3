"""The runtime directory and socket owners: what the control modules (ctl,
jsonrpcs) need to place their sockets and FIFOs as Kamailio does.

Runs in: main process (mod_init of the modules that make sockets).

Kamailio's main.c makes the runtime directory (`-Y`, `run_dir`, default
/run/kamailio) at every start, mode 0700; asyncd makes it the first time a
module puts a socket there, with the same mode, so a server without control
sockets (the README's example cfg) starts as any user. user2uid() and
group2gid() are src/core/ut.c's: a number or a name, and a user name gives
its group too.
"""
import grp
import os
import pwd

DEFAULT_RUN_DIR = "/run/kamailio"


def run_dir(script):
    """The runtime directory, made (one level, mode 0700) when missing.
    Raises OSError with Kamailio's wording."""
    d = str(script.core.get("run_dir") or DEFAULT_RUN_DIR)
    if not os.path.isdir(d):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise OSError(e.errno, f"failed to create runtime dir {d}: {e.strerror}") from None
    return d


def set_perms(path, mode, uid, gid):
    """A control socket's or FIFO's mode, and its owner and group unless both
    are -1 (unset). Raises OSError."""
    os.chmod(path, mode)
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid)


def user2uid(user):
    """-> (uid, gid of the user or -1); -1, -1 for no user. KeyError when unknown."""
    if user is None or user == "":
        return -1, -1
    if isinstance(user, int) or str(user).isdigit():
        return int(user), -1
    pw = pwd.getpwnam(str(user))
    return pw.pw_uid, pw.pw_gid


def group2gid(group):
    """-> gid; -1 for no group. KeyError when unknown."""
    if group is None or group == "":
        return -1
    if isinstance(group, int) or str(group).isdigit():
        return int(group)
    return grp.getgrnam(str(group)).gr_gid
