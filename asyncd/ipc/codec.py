"""msgpack frame codec for control messages between processes.

Runs in: every child that sends or receives over asyncd.ipc.

Only small control messages cross processes (architecture: "only ids and bytes
cross process boundaries"): a task is a short list whose first element says
what it is, e.g. `[K_RESUME_ROUTE, tindex, tlabel, "RESUME"]`. msgpack, never
pickle: a frame from a confused peer can at worst fail to decode, never run
code. Strings stay str (raw=False); bytes stay bytes.
"""
import msgpack

_packer = msgpack.Packer(use_bin_type=True)


def pack(obj):
    """Encode one frame. Raises TypeError for values msgpack cannot carry."""
    return _packer.pack(obj)


def unpack(frame):
    """Decode one frame; raises ValueError on garbage (callers log and drop)."""
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=False, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise ValueError(f"bad frame: {e}") from None
