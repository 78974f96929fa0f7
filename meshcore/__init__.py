"""meshcore: a service mesh for VMs and bare metal (Consul, Envoy, SPIFFE)."""

__version__ = "0.1.0"
