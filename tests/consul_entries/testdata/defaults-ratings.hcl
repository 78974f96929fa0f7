# node: vm2
# reviews' calls to ratings: at most 50 connections and 10 pending requests, ejected after 3 5xx in a
# row; proxy-defaults sets the global protocol (the catalog says http too) and a Config key meshcore
# does not know.
Kind     = "service-defaults"
Name     = "reviews"
Protocol = "http"
UpstreamConfig {
  Overrides = [
    {
      Name = "ratings"
      Limits {
        MaxConnections     = 50
        MaxPendingRequests = 10
      }
      PassiveHealthCheck {
        Interval         = "5s"
        MaxFailures      = 3
        BaseEjectionTime = "30s"
      }
      ConnectTimeoutMs = 1500
    },
  ]
}
MutualTLSMode = "permissive"
