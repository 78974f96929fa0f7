# The ingress gateway: the mesh's front door at 127.0.0.1:8080, routing to productpage.
# There is no sidecar here: the gateway proxy IS the Envoy. Real Consul describes a gateway's listeners
# in an `ingress-gateway` config entry; meshcore reads them from this registration's proxy upstreams,
# so the demo needs no config entries.
service {
  name = "ingress-gateway"
  id   = "ingress-gateway"
  kind = "ingress-gateway"
  port = 8080
  meta = {
    version = "v1"
  }
  tags = ["bookinfo", "gateway"]

  proxy {
    upstreams = [
      {
        destination_name   = "productpage"
        local_bind_address = "127.0.0.1"
        local_bind_port    = 8080
      }
    ]
  }

  check {
    id       = "ingress-gateway-listener"
    name     = "ingress-gateway listener"
    tcp      = "127.0.0.1:8080"
    interval = "5s"
  }
}
