# node: vm2
# ratings speaks plain TCP and details gRPC, said by service-defaults (the catalog's instances declare no
# protocol): reviews v2 reaches ratings through a tcp_proxy listener, and details' sidecar talks HTTP/2 to
# its app. (details: protocols-details.json)
Kind     = "service-defaults"
Name     = "ratings"
Protocol = "tcp"
