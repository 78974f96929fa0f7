# Consul agent settings for vm2 (details v1, reviews v2).
# Drop this directory into /etc/consul.d/ on the VM; meshcore's file source reads the same files
# when no Consul is running.
node_name      = "vm2"
advertise_addr = "127.0.0.12"
datacenter     = "dc1"
