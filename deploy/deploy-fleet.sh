#!/usr/bin/env bash
# Example fleet rollout over ssh: one binary, one config per node, one unit.
#   deploy/deploy-fleet.sh target/release/fleetsync host1 host2 host3 ...
# The first host's fleet secret is reused for the others, and each node
# gets the first host as its static peer: the first host learns the others
# from their inbound connections and relays changes between them (a star;
# list more peers with --peer for a denser mesh).
set -euo pipefail
bin=$1; shift
hosts=("$@")
first=${hosts[0]}
folder=${FOLDER:-/srv/shared}
data=/var/lib/fleetsync

for h in "${hosts[@]}"; do
  scp -q "$bin" "$h:/tmp/fleetsync"
  ssh "$h" "sudo install -m 0755 /tmp/fleetsync /usr/local/bin/fleetsync && sudo mkdir -p $folder"
done

ssh "$first" "sudo fleetsync init --data-dir $data --folder $folder" >/dev/null || true
secret=$(ssh "$first" "sudo sed -n 's/^fleet_secret = \"\\(.*\\)\"/\\1/p' $data/fleetsync.toml")
first_id=$(ssh "$first" "sudo fleetsync id --data-dir $data")
first_ip=$(ssh "$first" "hostname -I | cut -d' ' -f1")

for h in "${hosts[@]:1}"; do
  ssh "$h" "sudo fleetsync init --data-dir $data --folder $folder --fleet-secret $secret \
      --peer $first_id@$first_ip:7300 --force" >/dev/null
done
for h in "${hosts[@]}"; do
  scp -q "$(dirname "$0")/fleetsync.service" "$h:/tmp/fleetsync.service"
  ssh "$h" "sudo install -m 0644 /tmp/fleetsync.service /etc/systemd/system/ && \
            sudo systemctl daemon-reload && sudo systemctl enable --now fleetsync"
done
for h in "${hosts[@]}"; do
  echo "== $h"; ssh "$h" "fleetsync status --data-dir $data" || true
done
