# reviews v1 on vm1: reviews without ratings (no stars); calls nothing.
service {
  name = "reviews"
  id   = "reviews-v1"
  port = 9082
  meta = {
    version = "v1"
  }
  tags = ["bookinfo", "v1"]

  connect {
    sidecar_service {
      port = 21001
      proxy {
        local_service_address = "127.0.0.11"
        upstreams = []
      }
    }
  }

  check {
    id       = "reviews-v1-http"
    name     = "reviews HTTP /health"
    http     = "http://127.0.0.11:9082/health"
    interval = "5s"
  }
}
