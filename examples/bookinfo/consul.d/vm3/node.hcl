# Consul agent settings for vm3 (ratings v1, reviews v3).
# Drop this directory into /etc/consul.d/ on the VM; meshcore's file source reads the same files
# when no Consul is running.
node_name      = "vm3"
advertise_addr = "127.0.0.13"
datacenter     = "dc1"
