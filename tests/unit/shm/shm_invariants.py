"""Consistency checks of the shm structures, for the tests that kill a lock
holder mid-operation (test_dead_holder_*.py): each walks the real bytes and
asserts what the structure's docstring promises.

Runs in: the pytest process.
"""
import struct
import zlib

from shm.arena import FREE_PAGE, _CLS_HEAD, _FREE_HEAD, _INUSE, _PD, _U32
from shm.hashtable import _B, _E, _EH
from shm.htable import WHEEL, _TK
from shm.slots import CLASS_OF, NCLASS, NSLOTS, PAGE, SLOT_SIZES
from shm.tm_table import _HDR, _I32, _U16

_U64 = struct.Struct("<Q")


def cls(size):
    return CLASS_OF[(size + 15) >> 4]


def _walk(a, head, seen_limit):
    """Page numbers of a list of 1-based page links starting at `head`."""
    out = []
    p1 = head
    while p1:
        assert 0 < p1 <= a.npages, f"link to page {p1} out of range"
        assert len(out) <= seen_limit, "cycle in a page list"
        out.append(p1 - 1)
        p1 = _PD.unpack_from(a.buf, a._pd(p1 - 1))[4]
    return out


def check_arena(a):
    """The free-page list, the per-class partial lists, the page counter and
    each page's free-slot chain agree with the page descriptors."""
    buf = a.buf
    pds = [_PD.unpack_from(buf, a._pd(p)) for p in range(a.npages)]
    free = _walk(a, _U32.unpack_from(buf, _FREE_HEAD)[0], a.npages)
    assert sorted(free) == [p for p, d in enumerate(pds) if d[0] == FREE_PAGE]
    assert _U32.unpack_from(buf, _INUSE)[0] == a.npages - len(free)
    for c in range(NCLASS):
        chain = _walk(a, _U32.unpack_from(buf, _CLS_HEAD + 4 * c)[0], a.npages)
        assert len(set(chain)) == len(chain)
        prev = 0
        for p in chain:
            assert pds[p][5] == prev, f"class {c}: page {p} has a stale prev link"
            prev = p + 1
        assert sorted(chain) == [p for p, d in enumerate(pds) if d[0] == c and d[1] < NSLOTS[c]], \
            f"class {c}: partial list does not hold exactly the partial pages"
    for p, (c, used, carved, fh, _n, _pv) in enumerate(pds):
        if c == FREE_PAGE:
            continue
        assert used <= carved <= NSLOTS[c]
        n, seen = 0, set()
        while fh:
            assert (fh - 1) % SLOT_SIZES[c] == 0 and (fh - 1) // SLOT_SIZES[c] < carved
            assert fh not in seen
            seen.add(fh)
            n += 1
            fh = _U32.unpack_from(buf, a.data_off + p * PAGE + fh - 1)[0]
        assert n == carved - used, f"page {p}: {n} free slots chained, counters say {carved - used}"


def alloc_sound(a, size, n):
    """Allocate n slots of `size`: each lies inside a page of its class, no two
    overlap; free them again."""
    c = cls(size)
    offs = []
    for _ in range(n):
        o = a.alloc(size)
        if not o:
            break
        p = (o - a.data_off) // PAGE
        assert a.buf[a._pd(p)] == c, f"slot {o} handed out in a page of class {a.buf[a._pd(p)]}"
        assert (o - a.data_off - p * PAGE) % SLOT_SIZES[c] == 0
        assert (o - a.data_off - p * PAGE) + SLOT_SIZES[c] <= PAGE
        offs.append(o)
    assert len(set(offs)) == len(offs)
    for o in offs:
        a.free(o)
    return len(offs)


def check_hashtable(t):
    """Every chain of a ShmHashTable ends, holds only entries hashed to its
    bucket, each entry in one live arena slot of the class it records, labels
    below the bucket's next label, and each bucket counter is its chain's length.
    -> {key: [(index, label, value, ival, flags, expires)]} of every entry."""
    a = t.arena
    buf = a.buf
    lo, hi = a.data_off, a.data_off + a.npages * PAGE
    seen = set()
    out = {}
    for b in range(t.nbuckets):
        off, next_label, count = _B.unpack_from(buf, t.boff + 16 * b)
        n = 0
        while off:
            assert lo <= off < hi, f"bucket {b}: link {off} outside the arena's pages"
            assert off not in seen, f"bucket {b}: entry {off} linked twice (cycle or shared)"
            seen.add(off)
            nxt, label, h, kl, c, vl, flags, expires, ival = _E.unpack_from(buf, off)
            key = bytes(buf[off + _EH:off + _EH + kl])
            assert zlib.crc32(key) == h and h & t.mask == b, f"bucket {b}: entry of another bucket"
            page = (off - a.data_off) // PAGE
            assert buf[a._pd(page)] == c and _EH + kl + vl <= SLOT_SIZES[c]
            assert label < next_label
            value = bytes(buf[off + _EH + kl:off + _EH + kl + vl])
            out.setdefault(key, []).append((b, label, value, ival, flags, expires))
            n += 1
            off = nxt
        assert n == count, f"bucket {b}: {n} entries chained, counter says {count}"
    return out


def check_wheel(ht):
    """Every expiry-wheel chain of an autoexpire HTable, and the pending chain
    of a pass, ends and links only tickets in arena slots, none twice.
    -> {(bucket, label): tickets filed for it}."""
    a = ht.arena
    buf = a.buf
    lo, hi = a.data_off, a.data_off + a.npages * PAGE
    seen = set()
    out = {}
    heads = [ht.woff + 8 * slot for slot in range(WHEEL)] + [ht.poff]
    for ho in heads:
        toff = _U64.unpack_from(buf, ho)[0]
        while toff:
            assert lo <= toff < hi and toff not in seen, f"wheel chain at {ho}: bad link {toff}"
            seen.add(toff)
            assert buf[a._pd((toff - a.data_off) // PAGE)] == cls(24)
            nxt, b, label, _ex = _TK.unpack_from(buf, toff)
            out[(b, label)] = out.get((b, label), 0) + 1
            toff = nxt
    return out


def check_tm_table(t):
    """A TmTable's chains end and link only live slots of their bucket whose
    blob holds a key of that hash; the free stack holds distinct free slots;
    every slot is live or on the stack (none lost) and the counter is the
    number not on the stack.
    -> ({key: (index, label, payload)} chained, {index: key} live but in no chain)."""
    buf = t.buf
    a = t.arena
    top = _I32.unpack_from(buf, t.o_free)[0]
    assert 0 <= top <= t.nslots
    stack = struct.unpack_from("<%di" % top, buf, t.o_free + 4)
    assert len(set(stack)) == top, "a slot twice on the free stack"
    hdrs = [_HDR.unpack_from(buf, t.o_slots + 40 * i) for i in range(t.nslots)]
    assert all(not hdrs[i][1] for i in stack), "a live slot on the free stack"
    chained = {}
    chained_idx = set()
    for bucket in range(t.nbuckets):
        idx = _I32.unpack_from(buf, t.o_buckets + 4 * bucket)[0]
        while idx >= 0:
            assert idx < t.nslots and idx not in chained_idx, f"bucket {bucket}: bad link {idx}"
            chained_idx.add(idx)
            label, used, kh, off, nxt, blen, _dl = hdrs[idx]
            assert used and kh % t.nbuckets == bucket
            klen = _U16.unpack_from(buf, off)[0]
            assert 2 + klen <= blen <= a.slot_size(off)
            key = bytes(buf[off + 2:off + 2 + klen])
            assert t.key_hash(key) == kh
            chained[key] = (idx, label, bytes(buf[off + 2 + klen:off + blen]))
            idx = nxt
    loose = {}
    for i, (label, used, kh, off, _n, blen, _dl) in enumerate(hdrs):
        if used and i not in chained_idx:
            klen = _U16.unpack_from(buf, off)[0]
            loose[i] = bytes(buf[off + 2:off + 2 + klen])
    lost = set(range(t.nslots)) - set(stack) - {i for i, h in enumerate(hdrs) if h[1]}
    assert not lost, f"slots neither live nor free: {sorted(lost)}"
    assert t.count() == t.nslots - top
    return chained, loose
