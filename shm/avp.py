"""Per-message AVP and XAVP lists ($avp, $xavp, $xavu, $xavi).

Runs in: udp receivers, async task workers, async timers (anywhere a
request is routed or resumed).

In Kamailio these lists live in shm and are *moved* into the transaction at
t_newtran, then re-attached by faked_env in the resuming process
(docs/kamailio-tm.md §1; docs/kamailio-async.md §7).  Here they are private
Python objects on `ctx.avps` / `ctx.xavps`; tm stores `dumps()` (msgpack
bytes) with the transaction and the resuming process rebuilds them with
`loads()`.  The observable behaviour -- values
set before or after suspending are visible after resuming -- is the same.

AvpList: name (str, or int for `i:N` names) -> values, newest last in the
Python list, so index 0 in script terms (the newest, Kamailio's stack top)
is `vals[-1]`; a negative script index counts from the oldest.

XavpList: three namespaces, like Kamailio's three list heads: `xavp`
(stack of items per root name), `xavu` (one value per name, assignment
replaces) and `xavi` (as xavp, names case-insensitive).  A root item is
either a plain value (int/str) or a dict field-name -> list of values
(newest first).  Serialized as msgpack of nested lists/dicts.
"""
import msgpack

_ALL = "*"


_I64 = 1 << 63


def _fit(v):
    """Ints are 64-bit in Kamailio (and in msgpack): wrap, never fail dumps()."""
    if type(v) is int and not -_I64 <= v < _I64:
        return ((v + _I64) % (1 << 64)) - _I64
    return v


def _pos(index):
    """Script index (0 newest, -1 oldest) -> position in a newest-last list."""
    return -1 - index if index >= 0 else -index - 1


def avp_name(name):
    """Normalise an AVP name: `s:x` -> "x", `i:5` -> 5, `x` -> "x"."""
    if type(name) is str and len(name) > 2 and name[1] == ":":
        if name[0] in "sS":
            return name[2:]
        if name[0] in "iI":
            try:
                return int(name[2:])
            except ValueError:
                return name
    return name


class AvpList:
    __slots__ = ("d",)

    def __init__(self, d=None):
        self.d = d if d is not None else {}

    # -- script operations (PV get/set semantics of Kamailio's pv_get_avp/pv_set_avp) --
    def get(self, name, index=None):
        """index None/0 newest, n nth newest, negative from the oldest, "*" all
        joined with "," (as Kamailio prints $(avp(x)[*]))."""
        vals = self.d.get(avp_name(name))
        if not vals:
            return None
        if index is None or index == 0:
            return vals[-1]
        if index == _ALL:
            return ",".join(str(v) for v in reversed(vals))
        try:
            return vals[_pos(index)]
        except IndexError:
            return None

    def values(self, name):
        """All values, newest first."""
        return list(reversed(self.d.get(avp_name(name), ())))

    def count(self, name):
        return len(self.d.get(avp_name(name), ()))

    def set(self, name, index, value):
        """Assignment.  value None ($null): no index -> remove the newest, [n] -> the nth,
        [*] -> all.  A value: no index -> push on top, [*] -> replace all, [n] -> replace
        the nth (False if there is none), "append" -> add as the oldest."""
        key = avp_name(name)
        vals = self.d.get(key)
        value = _fit(value)
        if value is None:
            if not vals:
                return True
            if index == _ALL:
                del self.d[key]
                return True
            i = 0 if index is None else index
            try:
                del vals[_pos(i)]
            except IndexError:
                return True
            if not vals:
                del self.d[key]
            return True
        if index is None:
            if vals is None:
                self.d[key] = [value]
            else:
                vals.append(value)
            return True
        if index == _ALL:
            self.d[key] = [value]
            return True
        if index == "append":
            self.d.setdefault(key, []).insert(0, value)
            return True
        if not vals:
            return False
        try:
            vals[_pos(index)] = value
        except IndexError:
            return False
        return True

    def add(self, name, value):
        self.set(name, None, value)

    def clear(self):
        self.d.clear()

    def __bool__(self):
        return bool(self.d)

    # -- transport with the transaction ---------------------------------------------
    def dumps(self):
        return msgpack.packb(self.d, use_bin_type=True)

    @classmethod
    def loads(cls, data):
        if not data:
            return cls()
        return cls(msgpack.unpackb(data, raw=False, strict_map_key=False))


def _first(lst, idx):
    """Item idx of a newest-first list; idx None = 0."""
    if not lst:
        return None
    i = 0 if idx is None else idx
    try:
        return lst[i]
    except IndexError:
        return None


class XavpList:
    __slots__ = ("xavp", "xavu", "xavi")

    def __init__(self, xavp=None, xavu=None, xavi=None):
        self.xavp = xavp if xavp is not None else {}
        self.xavu = xavu if xavu is not None else {}
        self.xavi = xavi if xavi is not None else {}

    def _ns(self, kind):
        return self.xavp if kind == "xavp" else self.xavi if kind == "xavi" else self.xavu

    # -- $xavp / $xavi -----------------------------------------------------------------
    def get(self, kind, root, ridx=None, field=None, fidx=None):
        """$xavp(root[ridx]=>field[fidx]); a structured root without field reads as
        "<<xavp>>"; missing -> None."""
        if kind == "xavi":
            root = root.lower()
            field = field.lower() if field else field
        ns = self._ns(kind)
        if kind == "xavu":
            item = ns.get(root)
            if field is None:
                return "<<xavp>>" if type(item) is dict else item
            if type(item) is not dict:
                return None
            return item.get(field)
        items = ns.get(root)
        if ridx == _ALL:
            return None
        item = _first(items, ridx)
        if field is None:
            return "<<xavp>>" if type(item) is dict else item
        if type(item) is not dict:
            return None
        vals = item.get(field)
        if fidx == _ALL:
            return ",".join(str(v) for v in vals) if vals else None
        return _first(vals, fidx)

    def set(self, kind, root, ridx=None, field=None, fidx=None, value=None):
        """Assignment, per Kamailio's pv_set_xavp: `$xavp(r=>f) = v` adds a NEW root
        item holding f; `$xavp(r[n]=>f) = v` adds f (on top) in existing item n;
        `$xavp(r[n]=>f[m]) = v` replaces; `$null` removes (root item n or [*] all,
        field value m or [*] all of that field).  -> False when the target item is missing."""
        value = _fit(value)
        if kind == "xavu":
            return self._set_xavu(root, field, value)
        if kind == "xavi":
            root = root.lower()
            field = field.lower() if field else field
        ns = self._ns(kind)
        items = ns.get(root)
        if field is None:
            if value is None:
                if items:
                    if ridx == _ALL:
                        del ns[root]
                    else:
                        try:
                            del items[0 if ridx is None else ridx]
                        except IndexError:
                            pass
                        if not items:
                            del ns[root]
                return True
            if ridx == _ALL or items is None:
                ns[root] = [value]
            elif ridx is None:
                items.insert(0, value)
            else:
                try:
                    items[ridx] = value
                except IndexError:
                    return False
            return True
        if ridx is None and value is not None:
            # a new root item at the top, holding just this field
            ns.setdefault(root, []).insert(0, {field: [value]})
            return True
        item = _first(items, 0 if ridx in (None, _ALL) else ridx)
        if type(item) is not dict:
            return value is None
        vals = item.get(field)
        if value is None:
            if vals:
                if fidx == _ALL:
                    del item[field]
                else:
                    try:
                        del vals[0 if fidx is None else fidx]
                    except IndexError:
                        pass
                    if not vals:
                        del item[field]
            return True
        if fidx == _ALL or vals is None:
            item[field] = [value]
        elif fidx is None:
            vals.insert(0, value)
        else:
            try:
                vals[fidx] = value
            except IndexError:
                return False
        return True

    def _set_xavu(self, root, field, value):
        ns = self.xavu
        if field is None:
            if value is None:
                ns.pop(root, None)
            else:
                ns[root] = value
            return True
        item = ns.get(root)
        if type(item) is not dict:
            if value is None:
                return True
            item = ns[root] = {}
        if value is None:
            item.pop(field, None)
            if not item:
                del ns[root]
        else:
            item[field] = value
        return True

    def count(self, kind, root):
        if kind == "xavi":
            root = root.lower()
        v = self._ns(kind).get(root)
        if kind == "xavu":
            return 0 if v is None else 1
        return len(v) if v else 0

    def clear(self):
        self.xavp.clear()
        self.xavu.clear()
        self.xavi.clear()

    def __bool__(self):
        return bool(self.xavp or self.xavu or self.xavi)

    def dumps(self):
        return msgpack.packb((self.xavp, self.xavu, self.xavi), use_bin_type=True)

    @classmethod
    def loads(cls, data):
        if not data:
            return cls()
        xp, xu, xi = msgpack.unpackb(data, raw=False, strict_map_key=False)
        return cls(xp, xu, xi)
