# reviews v2 on vm2: reviews with black stars from ratings.
service {
  name = "reviews"
  id   = "reviews-v2"
  port = 9082
  meta = {
    version = "v2"
  }
  tags = ["bookinfo", "v2"]

  connect {
    sidecar_service {
      port = 21001
      proxy {
        local_service_address = "127.0.0.12"
        upstreams = [
          {
            destination_name   = "ratings"
            local_bind_address = "127.0.0.12"
            local_bind_port    = 9093
          }
        ]
      }
    }
  }

  check {
    id       = "reviews-v2-http"
    name     = "reviews HTTP /health"
    http     = "http://127.0.0.12:9082/health"
    interval = "5s"
  }
}
