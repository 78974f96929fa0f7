# reviews v3 on vm3: reviews with red stars from ratings.
service {
  name = "reviews"
  id   = "reviews-v3"
  port = 9082
  meta = {
    version = "v3"
  }
  tags = ["bookinfo", "v3"]

  connect {
    sidecar_service {
      port = 21001
      proxy {
        local_service_address = "127.0.0.13"
        upstreams = [
          {
            destination_name   = "ratings"
            local_bind_address = "127.0.0.13"
            local_bind_port    = 9093
          }
        ]
      }
    }
  }

  check {
    id       = "reviews-v3-http"
    name     = "reviews HTTP /health"
    http     = "http://127.0.0.13:9082/health"
    interval = "5s"
  }
}
