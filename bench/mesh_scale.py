#!/usr/bin/env python3
"""fleetsync fleet mesh scale: 8, 16, 32 nodes as processes on 127.0.0.1.

For each fleet size N (--sizes, default 8,16,32), in a fresh temp dir:
  * N nodes, each with its own data dir and folder, one shared fleet secret,
    mdns = false, peer exchange on (the default), max_peers = 32, mesh on
    distinct free UDP ports below the kernel's ephemeral range, admin API on
    127.0.0.1:0 (the node writes the bound address to <data_dir>/admin.addr).
  * star bootstrap: node 0 has no peers, nodes 1..N-1 list only node 0;
    the rest of the mesh comes from peer exchange.
Measured:
  mesh   time from starting the first node until every node reports
         min(N-1, max_peers) connected peers (admin /status, peers[].connected)
  up     (extra) time until every node answers on its admin API
  first  (extra) time until every node has at least one connected peer
  last>all  one 1 KiB file written on node N-1 until byte-identical on every node
  0>all     then (once all folders are in sync again) one 1 KiB file written
            on node 0 until byte-identical on every node
  idle   once settled (every folder in sync, nothing pending, then a few
         seconds more): per-node RSS (VmRSS) and CPU (utime+stime over
         --idle seconds, % of one core), median and max over the nodes.
Every process started here is stopped (SIGTERM, then SIGKILL) and the temp
dir removed, also on errors and Ctrl-C.

  python3 bench/mesh_scale.py --fleetsync target/release/fleetsync \
      [--sizes 8,16,32] [--idle 30] [--json out.json]
"""

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

# The /proc readers and the deadline wait are bench.py's (same directory).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import cpu_ticks, status_kib, wait  # noqa: E402

MAX_PEERS = 32
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_udp_ports(n):
    """n distinct UDP ports on 127.0.0.1 below the ephemeral range, each
    checked free by binding it (all held until the set is complete)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    hi = low - 1
    lo = max(10000, hi - 20000)
    held, ports = [], []
    try:
        base = random.randrange(lo, hi - 4 * n)
        p = base
        while len(ports) < n:
            if p > hi:
                raise RuntimeError("no free UDP ports below the ephemeral range")
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("127.0.0.1", p))
                held.append(s)
                ports.append(p)
            except OSError:
                s.close()
            p += 1
    finally:
        for s in held:
            s.close()
    return ports


def proc_stop_all(procs, timeout=15):
    """SIGTERM to all, then wait; SIGKILL whatever is left."""
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def same_bytes(path, want):
    try:
        with open(path, "rb") as f:
            return f.read() == want
    except OSError:
        return False


class Fleet:
    def __init__(self, binary, root, n, log_level):
        self.bin, self.root, self.n = binary, root, n
        self.nodes = []
        self.target = min(n - 1, MAX_PEERS)
        secret = os.urandom(32).hex()
        ports = free_udp_ports(n)
        for i in range(n):
            data = os.path.join(root, f"n{i:02d}", "data")
            folder = os.path.join(root, f"n{i:02d}", "folder")
            os.makedirs(data)
            os.makedirs(folder)
            nid = subprocess.check_output([binary, "id", "--data-dir", data], text=True).strip()
            self.nodes.append(dict(i=i, data=data, folder=folder, id=nid, udp=ports[i], admin=None, proc=None))
        boot = self.nodes[0]
        for s in self.nodes:
            peers = "" if s["i"] == 0 else f'"{boot["id"]}@127.0.0.1:{boot["udp"]}"'
            cfg = (
                f'data_dir = "{s["data"]}"\n'
                f'[mesh]\nlisten = "127.0.0.1:{s["udp"]}"\nfleet_secret = "{secret}"\n'
                f'mdns = false\npeer_exchange = true\nmax_peers = {MAX_PEERS}\npeers = [{peers}]\n'
                f'[admin]\nlisten = "127.0.0.1:0"\n'
                f'[log]\nlevel = "{log_level}"\n'
                f'[[folders]]\nid = "scale"\npath = "{s["folder"]}"\n'
            )
            s["config"] = os.path.join(s["data"], "fleetsync.toml")
            with open(s["config"], "w") as f:
                f.write(cfg)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETSYNC_")}

    def start(self):
        for s in self.nodes:
            log = open(os.path.join(s["data"], "node.log"), "w")
            s["proc"] = subprocess.Popen([self.bin, "run", "--config", s["config"]],
                                         stdout=log, stderr=log, env=self.env)
            log.close()

    def procs(self):
        return [s["proc"] for s in self.nodes if s["proc"] is not None]

    def stop(self):
        proc_stop_all(self.procs())

    def check_alive(self):
        for s in self.nodes:
            if s["proc"].poll() is not None:
                try:
                    with open(os.path.join(s["data"], "node.log")) as f:
                        tail = f.read()[-2000:]
                except OSError:
                    tail = ""
                raise RuntimeError(f"node {s['i']} exited with {s['proc'].returncode}:\n{tail}")

    def admin(self, s):
        if s["admin"] is None:
            try:
                with open(os.path.join(s["data"], "admin.addr")) as f:
                    a = f.read().strip()
                if a:
                    s["admin"] = a
            except OSError:
                pass
        return s["admin"]

    def status(self, s):
        a = self.admin(s)
        if not a:
            return None
        try:
            with urllib.request.urlopen(f"http://{a}/status", timeout=3) as r:
                return json.loads(r.read())
        except Exception:
            return None

    def connected(self, s):
        st = self.status(s)
        if not st:
            return -1
        return len({p["id"] for p in st["peers"] if p["connected"]})

    def wait_mesh(self, t0, timeout):
        """Seconds from t0 (the first node's start) until every node has
        >= 1 and >= target connected peers (a node counted done is
        re-checked at the end)."""
        up, first, full = {}, {}, {}

        def cond():
            self.check_alive()
            for s in self.nodes:
                if s["i"] in full:
                    continue
                c = self.connected(s)
                now = time.monotonic() - t0
                if c >= 0 and s["i"] not in up:
                    up[s["i"]] = now
                if c >= 1 and s["i"] not in first:
                    first[s["i"]] = now
                if c >= self.target:
                    full[s["i"]] = now
            return len(full) == self.n

        try:
            wait(f"{self.n} nodes to reach {self.target} connected peers", cond, timeout, 0.05)
        except TimeoutError as e:
            counts = [self.connected(s) for s in self.nodes]
            raise TimeoutError(f"{e}; connected peers per node: {counts}") from None
        # Confirm nobody dropped meanwhile.
        wait("the full mesh to hold", lambda: all(self.connected(s) >= self.target for s in self.nodes),
             timeout, 0.05)
        return max(up.values()), max(first.values()), max(full.values())

    def propagate(self, src, name, timeout):
        """Write a small file on node src (atomically, via a rename) and time
        until every node holds the same bytes."""
        body = os.urandom(1024)
        tmp = os.path.join(self.nodes[src]["data"], name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(body)
        paths = [os.path.join(s["folder"], name) for s in self.nodes]
        done = set()
        t0 = time.monotonic()
        os.rename(tmp, paths[src])

        def cond():
            for i, p in enumerate(paths):
                if i not in done and same_bytes(p, body):
                    done.add(i)
            return len(done) == self.n

        try:
            wait(f"{name} on all {self.n} nodes", cond, timeout, 0.005)
        except TimeoutError:
            self.check_alive()
            raise TimeoutError(f"{name}: on {len(done)}/{self.n} nodes after {timeout}s")
        return time.monotonic() - t0

    def settle(self, timeout):
        def ok():
            self.check_alive()
            for s in self.nodes:
                st = self.status(s)
                if not st:
                    return False
                f = st["folders"][0]
                if f.get("pending", 1) != 0 or not f.get("in_sync", False):
                    return False
            return True

        wait("all folders in sync", ok, timeout, 0.2)

    def idle(self, seconds):
        pids = [s["proc"].pid for s in self.nodes]
        c0 = [cpu_ticks(p) for p in pids]
        t0 = time.monotonic()
        time.sleep(seconds)  # the measurement window itself
        c1 = [cpu_ticks(p) for p in pids]
        dt = time.monotonic() - t0
        self.check_alive()
        rss = [status_kib(p, "VmRSS") / 1024 for p in pids]
        cpu = [100.0 * (b - a) / CLK_TCK / dt for a, b in zip(c0, c1)]
        return rss, cpu


def run_size(args, n):
    root = tempfile.mkdtemp(prefix=f"fleetsync-mesh{n}-", dir=args.workdir)
    fleet = None
    try:
        fleet = Fleet(args.fleetsync, root, n, args.log)
        t0 = time.monotonic()
        fleet.start()
        up, first, mesh = fleet.wait_mesh(t0, args.timeout)
        fleet.settle(args.timeout)
        last_all = fleet.propagate(n - 1, "from-last.txt", args.timeout)
        fleet.settle(args.timeout)  # each file goes into an idle, in-sync fleet
        zero_all = fleet.propagate(0, "from-zero.txt", args.timeout)
        r = dict(nodes=n, target_peers=fleet.target, all_up_s=round(up, 3), first_peer_s=round(first, 3),
                 full_mesh_s=round(mesh, 3), last_to_all_s=round(last_all, 3), zero_to_all_s=round(zero_all, 3))
        if args.idle > 0 and (args.idle_all or n == max(args.sizes)):
            fleet.settle(args.timeout)
            time.sleep(args.settle)  # let post-sync bookkeeping finish before the window
            rss, cpu = fleet.idle(args.idle)
            r.update(idle_window_s=args.idle,
                     rss_mib_median=round(statistics.median(rss), 2), rss_mib_max=round(max(rss), 2),
                     cpu_pct_median=round(statistics.median(cpu), 3), cpu_pct_max=round(max(cpu), 3),
                     rss_mib=[round(x, 2) for x in rss], cpu_pct=[round(x, 3) for x in cpu],
                     peers_at_end=[fleet.connected(s) for s in fleet.nodes])
        return r
    finally:
        if fleet is not None:
            fleet.stop()
        if args.keep:
            print(f"# kept {root} (node logs in nNN/data/node.log)", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


def fmt(v, nd=2):
    return "—" if v is None else f"{v:.{nd}f}"


def table(results):
    lines = [
        "| nodes | peers each | all answer /status (s) | all have ≥1 peer (s) | full mesh (s) | file last→all (s) | file 0→all (s) "
        "| RSS/node median / max (MiB) | idle CPU/node median / max (% core) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rss = f"{fmt(r.get('rss_mib_median'), 1)} / {fmt(r.get('rss_mib_max'), 1)}" if "rss_mib_median" in r else "—"
        cpu = f"{fmt(r.get('cpu_pct_median'), 2)} / {fmt(r.get('cpu_pct_max'), 2)}" if "cpu_pct_median" in r else "—"
        lines.append(f"| {r['nodes']} | {r['target_peers']} | {fmt(r['all_up_s'])} | {fmt(r['first_peer_s'])} | {fmt(r['full_mesh_s'])} "
                     f"| {fmt(r['last_to_all_s'], 3)} | {fmt(r['zero_to_all_s'], 3)} | {rss} | {cpu} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fleetsync", default="target/release/fleetsync")
    ap.add_argument("--sizes", default="8,16,32")
    ap.add_argument("--idle", type=float, default=30.0, help="idle CPU window in seconds (0: skip)")
    ap.add_argument("--idle-all", action="store_true", help="idle measurement at every size, not only the largest")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after in-sync before the idle window")
    ap.add_argument("--timeout", type=float, default=180.0, help="deadline per wait")
    ap.add_argument("--log", default="warn")
    ap.add_argument("--workdir", default=None, help="parent of the temp dirs (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (logs) instead of removing them")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    args.sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    args.fleetsync = os.path.abspath(args.fleetsync)
    if min(args.sizes) < 2:
        ap.error("sizes must be >= 2")

    # Stop cleanly on SIGTERM too (the finally blocks do the cleanup).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    results = []
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    for n in args.sizes:
        print(f"# {n} nodes ...", file=sys.stderr, flush=True)
        r = run_size(args, n)
        print(f"#   {json.dumps({k: v for k, v in r.items() if not isinstance(v, list)})}", file=sys.stderr, flush=True)
        results.append(r)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(started=started, host=platform.node(), kernel=platform.release(),
                           cpus=os.cpu_count(), binary=args.fleetsync, results=results), f, indent=2)


if __name__ == "__main__":
    main()
