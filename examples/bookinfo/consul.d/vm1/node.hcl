# Consul agent settings for vm1 (productpage v1, reviews v1).
# Drop this directory into /etc/consul.d/ on the VM; meshcore's file source reads the same files
# when no Consul is running.
node_name      = "vm1"
advertise_addr = "127.0.0.11"
datacenter     = "dc1"
