"""Module registry: maps `loadmodule "tm.so"` to asyncd.modules.<name>.

Runs in: main process (cfg compilation).

Kamailio resolves a module by file name under `mpath`; we ignore the
directory and the `.so` suffix and import the Python module of the same
name. The ASYNC module's script name `async` is a Python keyword, so it
lives in async_mod.py. A module file that fails to import only matters to
cfgs that load it.
"""
import importlib
import importlib.util
import os
import pkgutil

_PKG = "asyncd.modules"
# script name -> python module under asyncd.modules
ALIASES = {"async": "async_mod"}
_REVERSE = {v: k for k, v in ALIASES.items()}
_cache = {}


class UnknownModule(LookupError):
    pass


def script_name(name):
    """`/usr/lib/kamailio/modules/tm.so` -> `tm`."""
    base = os.path.basename(str(name).strip())
    if base.endswith(".so"):
        base = base[:-3]
    return base


def load_module(name):
    """-> ModuleExports. UnknownModule when no such module exists; other
    exceptions (ImportError, SyntaxError...) when the module file is broken."""
    sname = script_name(name)
    if sname in _cache:
        return _cache[sname]
    pyname = ALIASES.get(sname, sname)
    # python file names of aliased modules (async_mod) are not script names
    if not pyname.isidentifier() or pyname.startswith("_") or sname in _REVERSE:
        raise UnknownModule(sname)
    try:
        mod = importlib.import_module(f"{_PKG}.{pyname}")
    except ModuleNotFoundError as e:
        if e.name in (f"{_PKG}.{pyname}",):
            raise UnknownModule(sname) from None
        raise
    exports = getattr(mod, "EXPORTS", None)
    if exports is None:
        raise UnknownModule(sname)
    _cache[sname] = exports
    return exports


def all_known_modules():
    """Script names of every module file shipped (helpers included; those
    without EXPORTS are skipped by load_module callers)."""
    # the package's folder, found without importing it: core sits below the modules
    path = importlib.util.find_spec(_PKG).submodule_search_locations
    names = []
    for info in pkgutil.iter_modules(path):
        if info.name.startswith("_"):
            continue
        names.append(_REVERSE.get(info.name, info.name))
    return sorted(names)
