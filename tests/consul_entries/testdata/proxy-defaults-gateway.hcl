# Mesh-wide: every upstream not told otherwise goes through the gateway of the instances' datacenter.
Kind = "proxy-defaults"
Name = "global"
MeshGateway {
  Mode = "remote"
}
