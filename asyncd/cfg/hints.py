"""Did-you-mean hints for cfg errors: known script functions close to an
unknown name, the module that exports a function whose module is not
loaded, close module and parameter names.

Runs in: main process (cfg compilation, on errors only).

Below both the compiler (loadmodule / modparam errors) and the code
generator (unknown function calls), which both use it.  Every module file
is loaded through the registry, since a hint may name a module the cfg does
not load.
"""
import difflib

from asyncd.core.registry import all_known_modules, load_module
from asyncd.cfg import core_funcs


def close_function_names(fname, arity=None, n=2):
    """Known script function names that look like `fname` (typo hints); those
    taking `arity` arguments first."""
    arities = {}
    mods = [core_funcs.EXPORTS]
    for mod in all_known_modules():
        try:
            mods.append(load_module(mod))
        except Exception:
            continue
    for m in mods:
        for fe in m.functions:
            arities.setdefault(fe.name, set()).add(len(fe.params))
    close = difflib.get_close_matches(fname, sorted(arities), n=n + 2, cutoff=0.75)
    close.sort(key=lambda c: arity is not None and arity not in arities[c])   # stable
    return close[:n]


def did_you_mean(word, choices):
    """` (did you mean 'x'?)` for the closest of `choices`, or ""."""
    m = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{m[0]}'?)" if m else ""


def module_exporting(fname):
    """Name of a known module exporting script function `fname` (for error hints)."""
    for mod in all_known_modules():
        try:
            ex = load_module(mod)
        except Exception:
            continue
        if any(f.name == fname for f in ex.functions):
            return ex.name
    return None


def loadable_modules():
    """Script names of the module files that load (for an unknown loadmodule)."""
    return [m for m in all_known_modules() if _loadable(m)]


def _loadable(name):
    try:
        load_module(name)
        return True
    except Exception:
        return False
