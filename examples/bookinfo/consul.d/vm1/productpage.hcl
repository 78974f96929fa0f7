# productpage v1 on vm1: renders the book page from details and reviews, both reached through the local Envoy.
service {
  name = "productpage"
  id   = "productpage-v1"
  port = 9080
  meta = {
    version = "v1"
  }
  tags = ["bookinfo", "v1"]

  connect {
    sidecar_service {
      port = 21000
      proxy {
        local_service_address = "127.0.0.11"
        upstreams = [
          {
            destination_name   = "details"
            local_bind_address = "127.0.0.11"
            local_bind_port    = 9091
          },
          {
            destination_name   = "reviews"
            local_bind_address = "127.0.0.11"
            local_bind_port    = 9092
          }
        ]
      }
    }
  }

  check {
    id       = "productpage-v1-http"
    name     = "productpage HTTP /health"
    http     = "http://127.0.0.11:9080/health"
    interval = "5s"
  }
}
