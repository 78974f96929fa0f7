# node: vm1
# A canary: 80% of productpage's calls to reviews go to v1, 20% to v2; v3 is defined but gets nothing
# unless the router sends it.
Kind = "service-splitter"
Name = "reviews"
Splits = [
  {
    Weight        = 80
    ServiceSubset = "v1"
  },
  {
    Weight        = 20
    ServiceSubset = "v2"
    RequestHeaders {
      Set {
        x-canary = "maybe"
      }
    }
  },
]
