#!/bin/sh
# Installs Consul from HashiCorp's apt repository and runs it: provision-consul.sh server|client MY_IP SERVER_IP
# (Vagrant shell provisioner; safe to run again.)
set -eu
role=$1 ip=$2 server=$3
export DEBIAN_FRONTEND=noninteractive
if ! command -v consul >/dev/null 2>&1; then
  apt-get update -q
  apt-get install -y -q gpg curl lsb-release
  curl -fsSL https://apt.releases.hashicorp.com/gpg | gpg --dearmor --yes -o /usr/share/keyrings/hashicorp.gpg
  echo "deb [signed-by=/usr/share/keyrings/hashicorp.gpg] https://apt.releases.hashicorp.com $(lsb_release -cs) main" \
    > /etc/apt/sources.list.d/hashicorp.list
  apt-get update -q
  apt-get install -y -q consul
fi
mkdir -p /etc/consul.d
if [ "$role" = server ]; then
  extra='"server": true, "bootstrap_expect": 1, "ui_config": {"enabled": true}, "client_addr": "0.0.0.0",'
else
  extra="\"retry_join\": [\"$server\"], \"client_addr\": \"127.0.0.1\","
fi
cat > /etc/consul.d/consul.json <<JSON
{
  "datacenter": "dc1",
  "data_dir": "/opt/consul",
  "bind_addr": "$ip",
  "advertise_addr": "$ip",
  $extra
  "enable_script_checks": false
}
JSON
rm -f /etc/consul.d/consul.hcl
systemctl enable consul
systemctl restart consul
