# details v1 on vm2: the book's facts.
service {
  name = "details"
  id   = "details-v1"
  port = 9081
  meta = {
    version = "v1"
  }
  tags = ["bookinfo", "v1"]

  connect {
    sidecar_service {
      port = 21000
      proxy {
        local_service_address = "127.0.0.12"
        upstreams = []
      }
    }
  }

  check {
    id       = "details-v1-http"
    name     = "details HTTP /health"
    http     = "http://127.0.0.12:9081/health"
    interval = "5s"
  }
}
