# ratings v1 on vm3: stars per reviewer.
service {
  name = "ratings"
  id   = "ratings-v1"
  port = 9083
  meta = {
    version = "v1"
  }
  tags = ["bookinfo", "v1"]

  connect {
    sidecar_service {
      port = 21000
      proxy {
        local_service_address = "127.0.0.13"
        upstreams = []
      }
    }
  }

  check {
    id       = "ratings-v1-http"
    name     = "ratings HTTP /health"
    http     = "http://127.0.0.13:9083/health"
    interval = "5s"
  }
}
