"""The SIP message layer: byte-level parser with lazy headers, URIs, message building.

Runs in: udp receivers, async task workers, timers (any process handling a message).
See docs/contracts.md §3.
"""
from .hdrs import NameAddr, SipParseError, Via, canon
from .uri import SipUri, parse_cur_uri, parse_uri, parse_uri_cached, unescape
from .msg import SipMsg, faked_request, parse_msg
from .build import (build_ack, build_cancel, build_reply, build_request_fwd, reply_addr,
                    stable_to_tag, strip_top_via, top_via_received, via_dest, via_line)

__all__ = ["parse_msg", "SipMsg", "SipParseError", "parse_uri", "parse_uri_cached", "parse_cur_uri",
           "SipUri", "Via", "NameAddr", "canon", "unescape", "faked_request", "build_reply", "reply_addr",
           "stable_to_tag",
           "build_request_fwd", "via_line", "top_via_received", "strip_top_via", "via_dest",
           "build_cancel", "build_ack"]
