"""The request path. Read in this order (it follows DESIGN.md's diagram):

    gateway.py      the process: listeners, peer handshakes (interlink.net.peerlink), pools, timers; every
                    request a connection receives becomes a call of the call core
    call.py         the call core: one GatewayCall per call, whatever its protocols —
                    admit -> identify -> route -> filter -> forward -> ... -> the one exit (_finish)
    filters.py      the per-call filter chain (peer port: access domain, export ACL; then the site's filters)
    h2legs.py       the HTTP/2 legs (a caller's stream, an upstream stream): passthrough with end-to-end flow
                    control, or one message collected for translation
    boltlegs.py     the Bolt legs (a caller's request id, an upstream request id)
    translation.py  the codec step when caller and providers speak different protocols (through Call/Reply)
    deadlines.py    every call's deadline in one heap
    providers.py    each export's provider pools, following the registry

Layers: gateway/ uses net/ (connections, pools, TLS), wire/ (codecs), routes.py and model.py; it never
imports control/, which builds the snapshot and installs it (Gateway.install).
"""
