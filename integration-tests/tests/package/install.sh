#!/bin/bash
# Installs, reinstalls and purges the Debian package for real, inside the
# mount namespace of tests/package.rs (unshare --mount): /etc, /var/lib and
# /usr are overlays whose writes land in $DD, so dpkg, systemd-sysusers and
# the maintainer scripts change nothing outside. Prints KEY=VALUE lines for
# the test.  Env: DD (scratch dir), DEB (the package).
set -euo pipefail
for d in etc var/lib usr; do
  n=${d//\//_}
  mkdir -p "$DD/ov/$n/u" "$DD/ov/$n/w"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$DD/ov/$n/u,workdir=$DD/ov/$n/w" "/$d"
done
# The maintainer scripts talk to systemd when /run/systemd/system exists:
# hide the host's service manager from them.
if [ -d /run/systemd ]; then
  mount -t tmpfs tmpfs /run/systemd
fi
# The host may have its own fleetsync; this test starts from none.
rm -rf /etc/fleetsync /var/lib/fleetsync
# man-db's trigger (the man page) takes most of a dpkg run: off, as in
# Debian's container images.
rm -f /var/lib/man-db/auto-update

dpkg -i "$DEB" > "$DD/install.log" 2>&1
echo "user=$(getent passwd fleetsync | cut -d: -f1,6,7)"
echo "group=$(id -gn fleetsync)"
echo "config=$(stat -c '%a %U' /etc/fleetsync/fleetsync.toml)"
echo "state=$(stat -c '%a %U' /var/lib/fleetsync)"
echo "check=$(cd / && runuser -u fleetsync -- fleetsync config check /etc/fleetsync/fleetsync.toml)"
sum1=$(sha256sum < /etc/fleetsync/fleetsync.toml)

# Again: the upgrade path (configure with the old version): the machine's
# config and secret stay as they are.
dpkg -i "$DEB" > "$DD/upgrade.log" 2>&1
echo "kept_on_upgrade=$([ "$(sha256sum < /etc/fleetsync/fleetsync.toml)" = "$sum1" ] && echo yes || echo no)"

dpkg --purge fleetsync > "$DD/purge.log" 2>&1
echo "config_after_purge=$([ -e /etc/fleetsync/fleetsync.toml ] && echo yes || echo no)"
echo "state_after_purge=$([ -e /var/lib/fleetsync ] && echo yes || echo no)"
echo "bin_after_purge=$([ -e /usr/bin/fleetsync ] && echo yes || echo no)"
