"""Route type flags, as Kamailio's src/core/route.h.

Runs in: every process (constants only).
"""
REQUEST_ROUTE = 1
FAILURE_ROUTE = 2
TM_ONREPLY_ROUTE = 4
BRANCH_ROUTE = 8
ONSEND_ROUTE = 16
ERROR_ROUTE = 32
LOCAL_ROUTE = 64
CORE_ONREPLY_ROUTE = 128
BRANCH_FAILURE_ROUTE = 256
ONREPLY_ROUTE = TM_ONREPLY_ROUTE | CORE_ONREPLY_ROUTE
# event_route blocks accept any function flagged for REQUEST_ROUTE (docs/kamailio-async.md §2.0)
EVENT_ROUTE = REQUEST_ROUTE
ANY_ROUTE = 0xFFFFFFFF

# block kinds as the cfg names them -> route type the block runs as
BLOCK_KINDS = {
    "request": REQUEST_ROUTE,      # request_route / route{} / route[0]
    "route": REQUEST_ROUTE,        # route[NAME]: parsed as request routes
    "failure": FAILURE_ROUTE,
    "onreply": TM_ONREPLY_ROUTE,   # onreply_route[NAME]
    "reply": CORE_ONREPLY_ROUTE,   # reply_route / onreply_route without name
    "branch": BRANCH_ROUTE,
    "onsend": ONSEND_ROUTE,
    "event": EVENT_ROUTE,
}
