"""Resources the tests share."""

OWN_VS = """
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api]
  http: [{route: [{destination: {host: api}}]}]
"""
