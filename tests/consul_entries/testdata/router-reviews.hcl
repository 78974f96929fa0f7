# node: vm1
# Testers (header x-tester present) and the jason user go to v2; POSTs under /reviews/ are retried on 503
# and time out after 3s; everything else follows the resolver's default subset.
Kind = "service-router"
Name = "reviews"
Routes = [
  {
    Match {
      HTTP {
        Header = [
          {
            Name  = "end-user"
            Exact = "jason"
          },
        ]
      }
    }
    Destination {
      ServiceSubset = "v2"
    }
  },
  {
    Match {
      HTTP {
        PathPrefix = "/reviews/"
        Methods    = ["POST"]
        QueryParam = [
          {
            Name    = "debug"
            Present = true
          },
        ]
      }
    }
    Destination {
      ServiceSubset      = "v3"
      NumRetries         = 2
      RetryOnStatusCodes = [503]
      RetryOnConnectFailure = true
      RequestTimeout     = "3s"
    }
  },
  {
    Match {
      HTTP {
        PathPrefix = "/legacy/"
      }
    }
    Destination {
      PrefixRewrite = "/"
      IdleTimeout   = "10s"
    }
  },
]
