# Consul agent settings for gateway (the ingress gateway).
# Drop this directory into /etc/consul.d/ on the VM; meshcore's file source reads the same files
# when no Consul is running.
node_name      = "gateway"
advertise_addr = "127.0.0.1"
datacenter     = "dc1"
