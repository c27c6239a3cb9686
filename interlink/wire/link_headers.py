"""The gateway's link-header contract: the `x-interlink-*` keys two interlink gateways exchange.

These keys assert identity and gateway facts, so whatever a local caller sends under the prefix is dropped
at local ingress and only the gateway's own values travel; a peer's values are believed only as far as its
certificate (the caller site is always the certificate's site, never a header).

    key                        on                    set by               meaning
    x-interlink-caller-app     HTTP/2 and Bolt req.  caller's gateway     the calling application (as its site says)
    x-interlink-caller-site    HTTP/2 and Bolt req.  provider's gateway   the calling site (towards our providers)
    x-interlink-method         Bolt requests         caller's gateway     the method (so the peer need not read the body)
    x-interlink-status         Bolt responses        either gateway       a gateway-made error's status name
    x-interlink-cancel         Bolt oneway (link)    caller's gateway     the request id the caller gave up on
    x-interlink-loadtest       HTTP/2 and Bolt req.  either gateway       "1": a load-test call (a local caller may
                                                                          set it too: it marks, it grants nothing)
    x-interlink-target-zone    HTTP/2 and Bolt req.  caller, its gateway  the zone the call should be served in
    x-interlink-unit           HTTP/2 and Bolt req.  caller, its gateway  the caller's unit (routing stage `unit`)
    x-interlink-unprocessed    HTTP/2 trailers-only, either gateway       "1": the gateway refused the call before it
                               Bolt error responses                       reached any provider (UNAVAILABLE): the
                                                                          caller's gateway may try another one

HTTP/2 header names are bytes; Bolt header maps are decoded to str by the translation adapters, hence the
`*_TEXT` spellings.
"""

PREFIX = b"x-interlink-"
CALLER_APP = b"x-interlink-caller-app"
CALLER_SITE = b"x-interlink-caller-site"
METHOD = b"x-interlink-method"
STATUS = b"x-interlink-status"
CANCEL = b"x-interlink-cancel"
LOADTEST = b"x-interlink-loadtest"
TARGET_ZONE = b"x-interlink-target-zone"  # routing hints a caller may set (they choose, they grant nothing)
UNIT = b"x-interlink-unit"
UNPROCESSED = b"x-interlink-unprocessed"  # on a gateway's refusal made before forwarding (gateway/retries.py)

PREFIX_TEXT = PREFIX.decode()
CALLER_APP_TEXT = CALLER_APP.decode()
CALLER_SITE_TEXT = CALLER_SITE.decode()
STATUS_TEXT = STATUS.decode()
CANCEL_TEXT = CANCEL.decode()
LOADTEST_TEXT = LOADTEST.decode()
UNPROCESSED_TEXT = UNPROCESSED.decode()
TARGET_ZONE_TEXT = TARGET_ZONE.decode()
UNIT_TEXT = UNIT.decode()


def identity_stamps(site: str, app: str | None, *, to_peer: bool) -> list[tuple[bytes, bytes | None]]:
    """The keys that assert who is calling, as the gateway stamps them on a request it forwards: towards a
    peer gateway only the app (the site is proven by our certificate), towards our providers the site too.
    A None value means "remove": a Bolt header map drops the key (an HTTP/2 head never carries it)."""
    stamps: list[tuple[bytes, bytes | None]] = [] if to_peer else [(CALLER_SITE, site.encode())]
    stamps.append((CALLER_APP, app.encode() if app else None))
    return stamps
