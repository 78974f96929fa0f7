# node: vm1
# Consul's L7 intention example, rewritten for bookinfo: productpage may read reviews (GET under
# /reviews/ and the health path exactly) but not write; every other service is denied; a header
# condition lets an admin tool through.
Kind = "service-intentions"
Name = "reviews"
Sources = [
  {
    Name = "productpage"
    Permissions = [
      {
        Action = "deny"
        HTTP {
          PathPrefix = "/reviews/admin"
        }
      },
      {
        Action = "allow"
        HTTP {
          PathPrefix = "/reviews/"
          Methods    = ["GET", "HEAD"]
        }
      },
      {
        Action = "allow"
        HTTP {
          PathExact = "/health"
        }
      },
      {
        Action = "deny"
        HTTP {
          Methods = ["POST", "PUT", "DELETE"]
        }
      },
    ]
  },
  {
    Name   = "*"
    Action = "deny"
  },
]
