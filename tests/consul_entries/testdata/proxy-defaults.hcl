Kind = "proxy-defaults"
Name = "global"
Config {
  protocol = "http"
  envoy_prometheus_bind_addr = "0.0.0.0:9102"
}
