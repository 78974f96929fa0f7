# node: a1 (catalog multi-dc: web in dc1 calls store in dc2, api in both, cache in dc2)
# Mesh gateway modes from config entries, in Consul's order: web's upstream api says none itself (direct, to
# dc2's VM); web's service-defaults override for store says remote (dc2's gateway, its WAN address); the rest
# of web's upstreams (cache) take web's own service-defaults MeshGateway local (dc1's gateway), above the
# mesh-wide proxy-defaults remote.
Kind = "service-defaults"
Name = "web"
MeshGateway {
  Mode = "local"
}
UpstreamConfig {
  Overrides = [
    {
      Name        = "store"
      MeshGateway = { Mode = "remote" }
    }
  ]
}
