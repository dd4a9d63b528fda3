"""AVP/XAVP lists: Kamailio stack semantics and the msgpack round trip tm
uses to carry them across a suspend (docs/kamailio-tm.md §1; docs/kamailio-async.md §7).

Runs in: the pytest process.
"""
from hypothesis import given, strategies as st

from shm.avp import AvpList, XavpList


def test_avp_stack_semantics():
    a = AvpList()
    assert a.get("x") is None
    a.set("x", None, 1)
    a.set("x", None, "two")
    a.set("s:x", None, 3)                 # s:x is x
    assert a.get("x") == 3                # newest first
    assert a.get("x", 1) == "two" and a.get("x", 2) == 1 and a.get("x", 3) is None
    assert a.get("x", -1) == 1            # negative: from the oldest
    assert a.get("x", "*") == "3,two,1"
    assert a.values("x") == [3, "two", 1]
    assert a.set("x", 1, "TWO") and a.get("x", 1) == "TWO"     # [n] replaces
    assert not a.set("x", 9, "nope")
    a.set("x", None, None)                # $null removes the newest only
    assert a.values("x") == ["TWO", 1]
    a.set("x", 1, None)
    assert a.values("x") == ["TWO"]
    a.set("x", "*", "only")               # [*] = v replaces all
    assert a.values("x") == ["only"]
    a.set("x", "*", None)
    assert a.get("x") is None and not a
    a.set("i:5", None, 9)
    assert a.get(5) == 9 and a.get("i:5") == 9 and a.get("5") is None


def test_avp_dumps_loads_roundtrip():
    a = AvpList()
    a.add("x", 1)
    a.add("x", "b")
    a.add("i:7", "int name")
    b = AvpList.loads(a.dumps())
    assert b.values("x") == ["b", 1] and b.get(7) == "int name"
    assert AvpList.loads(b"").get("x") is None


def test_xavp_assignment_forms():
    x = XavpList()
    # the documented idiom: new root item, then add fields to item 0
    assert x.set("xavp", "sf", None, "uri", None, "sip:a@b")
    assert x.set("xavp", "sf", 0, "fr_timer", None, 10)
    assert x.get("xavp", "sf", None, "uri") == "sip:a@b"
    assert x.get("xavp", "sf", 0, "fr_timer") == 10
    assert x.set("xavp", "sf", None, "uri", None, "sip:c@d")   # a second item on top
    assert x.count("xavp", "sf") == 2
    assert x.get("xavp", "sf", 0, "uri") == "sip:c@d"
    assert x.get("xavp", "sf", 1, "uri") == "sip:a@b"
    assert x.get("xavp", "sf", 1, "fr_timer") == 10
    assert x.get("xavp", "sf", 0, "fr_timer") is None
    assert x.set("xavp", "sf", 1, "uri", 0, "sip:e@f")          # [n]=>f[m] replaces
    assert x.get("xavp", "sf", 1, "uri") == "sip:e@f"
    assert not x.set("xavp", "sf", 5, "uri", None, "nope")
    assert x.get("xavp", "sf") == "<<xavp>>"
    x.set("xavp", "sf", 1, "uri", None, None)                   # remove a field
    assert x.get("xavp", "sf", 1, "uri") is None
    x.set("xavp", "sf", 0, None, None, None)                    # remove item 0
    assert x.count("xavp", "sf") == 1 and x.get("xavp", "sf", 0, "fr_timer") == 10
    x.set("xavp", "sf", "*", None, None, None)
    assert x.count("xavp", "sf") == 0


def test_xavu_is_unique_and_xavi_ignores_case():
    x = XavpList()
    x.set("xavu", "u", None, "f", None, 1)
    x.set("xavu", "u", None, "f", None, 2)
    assert x.get("xavu", "u", None, "f") == 2
    x.set("xavu", "v", None, None, None, "plain")
    x.set("xavu", "v", None, None, None, "again")
    assert x.get("xavu", "v") == "again"
    x.set("xavu", "u", None, "f", None, None)
    assert x.get("xavu", "u", None, "f") is None
    x.set("xavi", "Root", None, "Field", None, "v")
    assert x.get("xavi", "ROOT", None, "field") == "v"
    assert x.get("xavp", "Root", None, "Field") is None      # separate list


def test_xavp_roundtrip():
    x = XavpList()
    x.set("xavp", "r", None, "a", None, 1)
    x.set("xavp", "r", 0, "b", None, "two")
    x.set("xavu", "u", None, None, None, 5)
    x.set("xavi", "i", None, "f", None, "v")
    y = XavpList.loads(x.dumps())
    assert y.get("xavp", "r", 0, "b") == "two" and y.get("xavp", "r", 0, "a") == 1
    assert y.get("xavu", "u") == 5 and y.get("xavi", "I", None, "F") == "v"
    assert not XavpList.loads(b"")


_vals = st.one_of(st.integers(min_value=-2**63, max_value=2**63 - 1), st.text(max_size=50))


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "i:3"]), _vals), max_size=40))
def test_avp_roundtrip_property(ops):
    a = AvpList()
    for name, v in ops:
        a.add(name, v)
    b = AvpList.loads(a.dumps())
    for name in ("a", "b", "i:3"):
        assert b.values(name) == a.values(name)
