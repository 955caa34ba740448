#!/bin/bash
# Runs deploy/deploy-fleet.sh twice against "hosts" that are this machine,
# inside the mount and network namespaces of tests/deploy.rs (unshare -m -n):
# /etc, /var/lib and /usr/local/bin are overlays whose writes land in $DD,
# ssh/scp/sudo/systemctl are the shims next to this file. Starts from the
# old layout (root's config with the secret inline in the data dir).
# Prints KEY=VALUE lines for the test.  Env: DD (scratch dir), BIN, REPO.
set -euo pipefail
ip link set lo up
for d in etc var/lib usr/local/bin; do
  n=${d//\//_}
  mkdir -p "$DD/ov/$n/u" "$DD/ov/$n/w"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$DD/ov/$n/u,workdir=$DD/ov/$n/w" "/$d"
done
# The node the systemctl shim started, stopped and waited for.
stop_node() {
  [ -f "$DD/node.pid" ] || return 0
  local pid
  pid=$(cat "$DD/node.pid")
  kill "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}
trap stop_node EXIT
PATH="$(dirname "$(readlink -f "$0")")/shims:$PATH"
export PATH
folder="$DD/my shared"
mkdir -p "$folder"
"$BIN" init --data-dir /var/lib/fleetsync --folder "$folder" >/dev/null
old_secret=$(sed -n 's/^fleet_secret = "\(.*\)"/\1/p' /var/lib/fleetsync/fleetsync.toml)
old_id=$("$BIN" id --data-dir /var/lib/fleetsync)
cd "$REPO"
FOLDER=$folder deploy/deploy-fleet.sh "$BIN" hostA hostB > "$DD/run1.log" 2>&1
sum1=$(cat /etc/fleetsync/fleetsync.toml /etc/fleetsync/fleet.secret | sha256sum)
FOLDER=$folder deploy/deploy-fleet.sh "$BIN" hostA hostB > "$DD/run2.log" 2>&1
sum2=$(cat /etc/fleetsync/fleetsync.toml /etc/fleetsync/fleet.secret | sha256sum)
echo hello > "$folder/x.txt"
secret=$(tr -d ' \n' < /etc/fleetsync/fleet.secret)
echo "same_secret=$([ "$secret" = "$old_secret" ] && echo yes || echo no)"
echo "same_identity=$([ "$(runuser -u fleetsync -- fleetsync id --data-dir /var/lib/fleetsync)" = "$old_id" ] && echo yes || echo no)"
echo "rerun_kept=$([ "$sum1" = "$sum2" ] && echo yes || echo no)"
echo "secret_in_argv=$(grep -c "$secret" "$DD/argv.log" || true)"
echo "secret_in_config=$(grep -c "$secret" /etc/fleetsync/fleetsync.toml || true)"
echo "secret_mode=$(stat -c '%a %U' /etc/fleetsync/fleet.secret)"
echo "old_config_left=$([ -e /var/lib/fleetsync/fleetsync.toml ] && echo yes || echo no)"
echo "dropin=$(grep ReadWritePaths /etc/systemd/system/fleetsync.service.d/folder-my-shared.conf)"
for _ in $(seq 300); do
  grep -q '1 files' <(runuser -u fleetsync -- fleetsync status --config /etc/fleetsync/fleetsync.toml) && break
  sleep 0.1
done
echo "status=$(runuser -u fleetsync -- fleetsync status --config /etc/fleetsync/fleetsync.toml | grep -c '1 files')"
