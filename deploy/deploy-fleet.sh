#!/usr/bin/env bash
# Example fleet rollout over ssh: one binary, one config per node, the
# hardened unit, one drop-in per synced folder.
#   deploy/deploy-fleet.sh target/release/fleetsync host1 host2 host3 ...
#   FOLDER=/srv/shared (the default) is the folder synced on every host.
# Each host gets a `fleetsync` system user, /etc/fleetsync/fleetsync.toml
# (no secret inside: fleet_secret_file = "fleet.secret"), the fleet secret in
# /etc/fleetsync/fleet.secret (0600, owned by fleetsync), its state in
# /var/lib/fleetsync, and a drop-in that makes FOLDER writable for the unit.
# The first host's secret is reused for the others: it travels from host to
# host through ssh's stdin, never on a command line (where `ps` shows it).
# Each node gets the first host as its static peer: the first host learns
# the others from their inbound connections and peer exchange links them all.
# Safe to re-run (e.g. to roll out a new binary): a host's existing secret
# and config are kept, never overwritten. A config left by the old layout
# (/var/lib/fleetsync/fleetsync.toml, secret inline) is moved to /etc.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 BINARY HOST [HOST...]" >&2
  exit 2
fi
bin=$1; shift
hosts=("$@")
first=${hosts[0]}
folder=${FOLDER:-/srv/shared}
here=$(dirname "$0")

# Run the script on stdin as root on host $1, with the other arguments.
# Arguments are not secret (they show in `ps`); the secret never is one.
as_root() {
  local h=$1; shift
  # Expanded here on purpose: the arguments, quoted for the remote shell.
  # shellcheck disable=SC2029
  ssh "$h" "sudo bash -s -- $(printf '%q ' "$@")"
}

# Binary, user, directories, unit and the folder's drop-in.
prepare() {
  as_root "$1" "$folder" <<'EOF'
set -euo pipefail
folder=$1
install -m 0755 /tmp/fleetsync /usr/local/bin/fleetsync
id -u fleetsync >/dev/null 2>&1 || useradd --system --user-group \
  --home-dir /var/lib/fleetsync --shell /usr/sbin/nologin fleetsync
install -d -m 0755 /etc/fleetsync
install -d -m 0700 -o fleetsync -g fleetsync /var/lib/fleetsync
# An old-layout data dir was root's: the node runs as fleetsync now.
chown -R fleetsync:fleetsync /var/lib/fleetsync
mkdir -p "$folder"
chown fleetsync:fleetsync "$folder"
install -m 0644 /tmp/fleetsync.service /etc/systemd/system/fleetsync.service
# ProtectSystem=strict: the folder is writable only through this drop-in.
id=$(basename "$folder" | tr -c 'A-Za-z0-9._\n-' '-')
install -d -m 0755 /etc/systemd/system/fleetsync.service.d
# Quoted: systemd splits the value at spaces; % starts a specifier.
printf '[Service]\nReadWritePaths="%s"\n' "${folder//%/%%}" \
  > "/etc/systemd/system/fleetsync.service.d/folder-$id.conf"
EOF
}

# The first host's secret, made once: the one of an old-layout config if
# there is one, else 64 hex chars from the kernel's random source.
make_secret() {
  as_root "$1" <<'EOF'
set -euo pipefail
umask 077
s=/etc/fleetsync/fleet.secret
test -s $s && exit 0
old=/var/lib/fleetsync/fleetsync.toml
if [ -e $old ] && grep -q '^fleet_secret = ' $old; then
  sed -n 's/^fleet_secret = "\(.*\)"/\1/p' $old > $s.tmp
else
  od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > $s.tmp
fi
chown fleetsync:fleetsync $s.tmp
mv $s.tmp $s
EOF
}

# Host $1 gets the first host's secret (through a pipe) unless it has one.
copy_secret() {
  if ! ssh "$1" "sudo test -s /etc/fleetsync/fleet.secret"; then
    ssh "$first" "sudo cat /etc/fleetsync/fleet.secret" |
      ssh "$1" "sudo sh -c 'umask 077; f=/etc/fleetsync/fleet.secret
        cat > \$f.tmp && chown fleetsync:fleetsync \$f.tmp && mv \$f.tmp \$f'"
  fi
}

# Host $1's config unless it has one: `fleetsync init` run as fleetsync (so
# the identity it makes is that user's) writes one with a throwaway inline
# secret; the copy in /etc names the secret file instead. $2: --peer value.
configure() {
  as_root "$1" "$folder" "${2:-}" <<'EOF'
set -euo pipefail
cd /  # fleetsync cannot enter root's home directory
folder=$1 peer=$2
conf=/etc/fleetsync/fleetsync.toml old=/var/lib/fleetsync/fleetsync.toml
if [ -e $conf ]; then
  echo "$(hostname): kept the existing $conf"
  exit 0
fi
if [ ! -e $old ]; then
  args=(--data-dir /var/lib/fleetsync --folder "$folder")
  [ -z "$peer" ] || args+=(--peer "$peer")
  sudo -u fleetsync fleetsync init "${args[@]}" >/dev/null
fi
sed 's/^fleet_secret = .*/fleet_secret_file = "fleet.secret"/' $old |
  install -m 0644 /dev/stdin $conf.tmp
mv $conf.tmp $conf
rm -f $old
echo "$(hostname): wrote $conf"
EOF
}

for h in "${hosts[@]}"; do
  scp -q "$bin" "$h:/tmp/fleetsync"
  scp -q "$here/fleetsync.service" "$h:/tmp/fleetsync.service"
  prepare "$h"
done
make_secret "$first"
for h in "${hosts[@]:1}"; do
  copy_secret "$h"
done
configure "$first"
first_id=$(ssh "$first" "sudo -u fleetsync fleetsync id --data-dir /var/lib/fleetsync")
first_ip=$(ssh "$first" "hostname -I | cut -d' ' -f1")
for h in "${hosts[@]:1}"; do
  configure "$h" "$first_id@$first_ip:7300"
done

# Start, or restart onto the new binary (Type=notify: returns once ready).
for h in "${hosts[@]}"; do
  ssh "$h" "sudo systemctl daemon-reload && sudo systemctl enable --quiet fleetsync &&
    sudo systemctl restart fleetsync"
done
# Status as the service user, who can read the secret file like the node.
status=0
for h in "${hosts[@]}"; do
  echo "== $h"
  ssh "$h" "sudo -u fleetsync fleetsync status --config /etc/fleetsync/fleetsync.toml" || status=1
done
exit $status
