#!/usr/bin/env python3
"""Fan-out on shaped links: fleetsync vs Syncthing (and sendme in L1) on a
small LAN of network namespaces built here (needs root).

The LAN: one namespace holding a bridge, one namespace per node joined to it
by a veth pair, addresses 10.231.7.10+i/24 only inside those namespaces,
each node's uplink (its veth end, egress) shaped with `tc qdisc ... tbf`
(netem is not available on every kernel; tbf is). Downlinks are not shaped.
Nodes listen on their namespace address; fleetsync's admin API is reached
on the namespace's loopback (a socket made inside it), Syncthing's REST API
on a Unix socket, so the veths carry only the tools' own traffic and the
origin's tx counter is its upload.

Scenarios (full / --quick sizes), tools alternating repetition by repetition:
  L1  one 1 GiB file, 2 nodes, 1 Gbit/s uplinks          3 reps / 1 (64 MiB)
      time from the file appearing in the origin's folder until the peer has
      all of it (wire time 1 GiB at 1 Gbit/s = 8.6 s); CPU-seconds per GiB of
      sender and receiver (utime+stime, children included, from
      /proc/<pid>/stat) from the move until both are idle again (sendme:
      each process's whole life, its sender hashing the file first); the
      sender's upload (tx bytes of its veth) as a multiple of the file size
      and the packets its shaper dropped (queue full: retransmissions).
  L2  one 100 MiB file, origin + 7 receivers, 100 Mbit/s  2 reps / 1 (16 MiB,
      uplinks                                                     3 receivers)
      time until the first and until every receiver has the file, and the
      origin's upload (tx bytes of its veth) as a multiple of the file size,
      and its shaper's drops.

Each repetition starts a fresh cluster of the tool (own data dirs), waits
until every node is connected to every other, measures, checks the bytes
(BLAKE2b) and stops it. Everything this starts it stops, and every namespace
it makes it deletes, also on errors, Ctrl-C and SIGTERM; leftovers of a
crashed run (namespaces named fsbl-*, their processes) are removed first.

Run through bench.py (`bench/run.sh --lan [--quick]`) or alone:
  sudo python3 bench/lan.py --fleetsync target/release/fleetsync \
      --syncthing "$(command -v syncthing)" [--sendme PATH] [--quick]
"""

import argparse
import ctypes
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

import stconfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import cpu_seconds, file_hash, make_file, proc_stop, wait, wait_rusage  # noqa: E402

PREFIX = "fsbl-"  # every namespace (and root-namespace veth) of this module
SUBNET = "10.231.7"
FLEETSYNC_PORT = 7400
FLEETSYNC_ADMIN_PORT = 7380
SYNCTHING_PORT = 22000
GIB = 1 << 30


def run(*args):
    """Run a command; fail with its stderr."""
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed: {p.stderr.strip()}")
    return p.stdout


def sweep():
    """Remove what a killed earlier run left: its processes (found by
    namespace), its namespaces, veth ends still in this namespace."""
    names = [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]
    for ns in [n for n in names if n.startswith(PREFIX)]:
        for pid in run("ip", "netns", "pids", ns).split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for line in run("ip", "-o", "link", "show").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(PREFIX):
            subprocess.run(["ip", "link", "del", name], capture_output=True)


class Lan:
    """A bridge in its own namespace and `n` host namespaces on it, each
    uplink shaped to `mbit` Mbit/s."""

    def __init__(self, n, mbit):
        sweep()
        self.n = n
        self.namespaces = []
        self.bridge = PREFIX + "br"
        try:
            self._netns(self.bridge)
            run("ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge")
            run("ip", "-n", self.bridge, "link", "set", "br0", "up")
            for i in range(n):
                self._add_host(i, mbit)
        except BaseException:
            self.close()
            raise

    def _netns(self, name):
        run("ip", "netns", "add", name)
        self.namespaces.append(name)

    def _add_host(self, i, mbit):
        ns = self.host(i)
        self._netns(ns)
        # Made here under unique names, then moved into place.
        h, b = f"{PREFIX}h{i}", f"{PREFIX}b{i}"
        run("ip", "link", "add", h, "type", "veth", "peer", "name", b)
        run("ip", "link", "set", h, "netns", ns)
        run("ip", "link", "set", b, "netns", self.bridge)
        run("ip", "-n", self.bridge, "link", "set", b, "master", "br0")
        run("ip", "-n", self.bridge, "link", "set", b, "up")
        run("ip", "-n", ns, "link", "set", h, "name", "eth0")
        run("ip", "-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        self.shape(i, mbit)

    def shape(self, i, mbit):
        # The bucket must hold what arrives between two timer ticks at full
        # rate (and at least one 64 KiB GSO segment); 50 ms of queue.
        burst = max(64 << 10, mbit * 1_000_000 // 8 // 500)
        run("tc", "-n", self.host(i), "qdisc", "replace", "dev", "eth0", "root", "tbf",
            "rate", f"{mbit}mbit", "burst", str(burst), "latency", "50ms")

    def host(self, i):
        return f"{PREFIX}{i}"

    def addr(self, i):
        return f"{SUBNET}.{10 + i}"

    def tx_bytes(self, i):
        link = json.loads(run("ip", "-n", self.host(i), "-j", "-s", "link", "show", "dev", "eth0"))[0]
        return link["stats64"]["tx"]["bytes"]

    def drops(self, i):
        """Packets the shaper on node i's uplink dropped (queue full)."""
        return json.loads(run("tc", "-n", self.host(i), "-s", "-j", "qdisc", "show", "dev", "eth0"))[0]["drops"]

    def exec_argv(self, i, argv):
        return ["ip", "netns", "exec", self.host(i)] + list(argv)

    def close(self):
        for ns in reversed(self.namespaces):
            p = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if p.returncode != 0:
                print(f"cleanup: ip netns del {ns}: {p.stderr.strip()}", file=sys.stderr)
        self.namespaces = []


class UnixHTTP(http.client.HTTPConnection):
    """HTTP over a Unix socket (Syncthing's REST API here)."""

    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def connect_in_netns(ns, addr, timeout):
    """A TCP connection made inside namespace `ns` (to its loopback): a
    short-lived thread enters the namespace (setns changes only the calling
    thread) and hands the socket back; a socket keeps its namespace."""
    out = {}

    def work():
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if LIBC.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {ns}")
            finally:
                os.close(fd)
            out["sock"] = socket.create_connection(addr, timeout)
        except Exception as e:
            out["err"] = e
    t = threading.Thread(target=work)
    t.start()
    t.join()
    if "err" in out:
        raise out["err"]
    return out["sock"]


class NetnsHTTP(http.client.HTTPConnection):
    """HTTP to 127.0.0.1:port inside a namespace (fleetsync's admin API must
    listen on loopback)."""

    def __init__(self, ns, port, timeout=10):
        super().__init__("127.0.0.1", port, timeout=timeout)
        self.ns = ns

    def connect(self):
        self.sock = connect_in_netns(self.ns, ("127.0.0.1", self.port), self.timeout)


def http_json(conn, path, headers=None):
    """GET; None when not reachable or not JSON."""
    try:
        conn.request("GET", path, headers=headers or {})
        data = conn.getresponse().read()
        return json.loads(data) if data else {}
    except Exception:
        return None
    finally:
        conn.close()


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETSYNC_") and k != "RUNTIME_DIRECTORY"}
    env.update(extra)
    return env


class FleetsyncLan:
    name = "fleetsync"

    def __init__(self, binary, root, lan, n):
        self.root = tempfile.mkdtemp(prefix="fs-", dir=root)
        self.nodes = []
        secret = os.urandom(32).hex()
        for i in range(n):
            data = os.path.join(self.root, str(i), "data")
            folder = os.path.join(self.root, str(i), "folder")
            os.makedirs(data)
            os.makedirs(folder)
            nid = subprocess.check_output([binary, "id", "--data-dir", data], text=True).strip()
            self.nodes.append(dict(data=data, folder=folder, id=nid, addr=lan.addr(i), ns=lan.host(i)))
        level = os.environ.get("FLEETSYNC_BENCH_LOG", "warn")
        try:
            for i, s in enumerate(self.nodes):
                peers = ", ".join(f'"{o["id"]}@{o["addr"]}:{FLEETSYNC_PORT}"' for o in self.nodes if o is not s)
                cfg = (f'data_dir = "{s["data"]}"\n[mesh]\nlisten = "{s["addr"]}:{FLEETSYNC_PORT}"\n'
                       f'fleet_secret = "{secret}"\nmdns = false\npeers = [{peers}]\n'
                       f'[admin]\nlisten = "127.0.0.1:{FLEETSYNC_ADMIN_PORT}"\n[log]\nlevel = "{level}"\n'
                       f'[[folders]]\nid = "bench"\npath = "{s["folder"]}"\n')
                path = os.path.join(s["data"], "fleetsync.toml")
                with open(path, "w") as f:
                    f.write(cfg)
                log = open(os.path.join(s["data"], "node.log"), "w")
                s["proc"] = subprocess.Popen(lan.exec_argv(i, [binary, "run", "--config", path]),
                                             stdout=log, stderr=log, env=clean_env())
            wait("fleetsync nodes to connect to each other", self._meshed, timeout=90, poll=0.1)
            self.settled()
        except BaseException:
            self.stop()
            raise

    def status(self, s):
        return http_json(NetnsHTTP(s["ns"], FLEETSYNC_ADMIN_PORT), "/status")

    def _meshed(self):
        for s in self.nodes:
            if s["proc"].poll() is not None:
                raise RuntimeError(f"fleetsync node exited ({s['data']}/node.log)")
            st = self.status(s)
            if not st or sum(1 for p in st["peers"] if p["connected"]) < len(self.nodes) - 1:
                return False
        return True

    def folder(self, i):
        return self.nodes[i]["folder"]

    def pid(self, i):
        return self.nodes[i]["proc"].pid

    def settled(self):
        def ok():
            for s in self.nodes:
                st = self.status(s)
                if not st or st["folders"][0]["pending"] != 0 or not st["folders"][0]["in_sync"]:
                    return False
            return True
        wait("fleetsync to settle", ok, timeout=300, poll=0.05)

    def stop(self):
        for s in self.nodes:
            if "proc" in s:
                proc_stop(s["proc"])
        shutil.rmtree(self.root, ignore_errors=True)


class SyncthingLan:
    name = "syncthing"

    def __init__(self, binary, root, lan, n):
        self.root = tempfile.mkdtemp(prefix="st-", dir=root)
        self.nodes = []
        for i in range(n):
            home = os.path.join(self.root, str(i), "home")
            folder = os.path.join(self.root, str(i), "folder")
            os.makedirs(home)
            os.makedirs(folder)
            subprocess.check_call([binary, "generate", "--home", home, "--no-default-folder", "--skip-port-probing"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            dev_id = ET.parse(os.path.join(home, "config.xml")).getroot().find("device").get("id")
            self.nodes.append(dict(home=home, folder=folder, id=dev_id, addr=lan.addr(i),
                                   sock=os.path.join(home, "gui.sock"), key=os.urandom(16).hex()))
        for s in self.nodes:
            self._configure(s)
        env = clean_env(STMONITORED="yes", STNOUPGRADE="1", STNODEFAULTFOLDER="1")
        try:
            for i, s in enumerate(self.nodes):
                log = open(os.path.join(s["home"], "syncthing.log"), "w")
                argv = [binary, "serve", "--home", s["home"], "--no-browser", "--no-restart",
                        f"--gui-address=unix://{s['sock']}", f"--gui-apikey={s['key']}"]
                s["proc"] = subprocess.Popen(lan.exec_argv(i, argv), stdout=log, stderr=log, env=env)
            for s in self.nodes:
                wait("syncthing REST API", lambda: self._get(s, "/rest/system/ping") is not None, timeout=60, poll=0.1)
            wait("syncthing devices to connect to each other", self._meshed, timeout=120, poll=0.2)
            self.settled()
        except BaseException:
            self.stop()
            raise

    def _configure(self, s):
        """Edit config.xml before the first start: static addresses of every
        other device, discovery, relays, NAT and reporting off, one folder
        shared with all."""
        path = os.path.join(s["home"], "config.xml")
        tree = ET.parse(path)
        cfg = tree.getroot()
        stconfig.isolate(cfg, f"tcp://{s['addr']}:{SYNCTHING_PORT}", startBrowser="false", reconnectionIntervalS="1")
        folder = ET.Element("folder", id="bench", label="bench", path=s["folder"], type="sendreceive",
                            rescanIntervalS="3600", fsWatcherEnabled="true", fsWatcherDelayS="1",
                            ignorePerms="false", autoNormalize="true")
        ET.SubElement(folder, "filesystemType").text = "basic"
        for o in self.nodes:
            ET.SubElement(folder, "device", id=o["id"], introducedBy="")
            if o is s:
                continue
            dev = ET.SubElement(cfg, "device", id=o["id"], name=o["addr"], compression="metadata",
                                introducer="false", skipIntroductionRemovals="false", introducedBy="")
            ET.SubElement(dev, "address").text = f"tcp://{o['addr']}:{SYNCTHING_PORT}"
            ET.SubElement(dev, "paused").text = "false"
            ET.SubElement(dev, "autoAcceptFolders").text = "false"
        cfg.insert(0, folder)
        tree.write(path)

    def _get(self, s, path):
        return http_json(UnixHTTP(s["sock"]), path, {"X-API-Key": s["key"]})

    def _meshed(self):
        for s in self.nodes:
            if s["proc"].poll() is not None:
                raise RuntimeError(f"syncthing exited ({s['home']}/syncthing.log)")
            c = self._get(s, "/rest/system/connections")
            if not c:
                return False
            for o in self.nodes:
                if o is not s and not c["connections"].get(o["id"], {}).get("connected"):
                    return False
        return True

    def folder(self, i):
        return self.nodes[i]["folder"]

    def pid(self, i):
        return self.nodes[i]["proc"].pid

    def settled(self):
        def ok():
            for s in self.nodes:
                st = self._get(s, "/rest/db/status?folder=bench")
                if not st or st.get("state") != "idle" or st.get("needTotalItems", 1) != 0:
                    return False
            return True
        wait("syncthing to settle", ok, timeout=300, poll=0.1)

    def stop(self):
        for s in self.nodes:
            if "proc" in s:
                proc_stop(s["proc"])
        shutil.rmtree(self.root, ignore_errors=True)


def spread(tool, lan, stage, src, size, receivers, want):
    """Move a copy of `src` into node 0's folder; time until each receiver
    has it whole. Returns first, all (s), origin tx bytes, CPU-seconds of
    the origin and of receiver 1 until every node is idle again."""
    name = f"lan-{random.randrange(1 << 30)}.bin"
    copy = os.path.join(stage, name)
    shutil.copyfile(src, copy)
    os.sync()
    dsts = {r: os.path.join(tool.folder(r), name) for r in receivers}
    tx0, drops0 = lan.tx_bytes(0), lan.drops(0)
    cpu0 = {i: cpu_seconds(tool.pid(i)) for i in (0, receivers[0])}
    t0 = time.monotonic()
    os.rename(copy, os.path.join(tool.folder(0), name))
    done = {}

    def all_there():
        for r, d in dsts.items():
            if r not in done:
                try:
                    if os.stat(d).st_size == size:
                        done[r] = time.monotonic() - t0
                except OSError:
                    pass
        return len(done) == len(dsts)
    wait(f"{tool.name}: the file on every receiver", all_there, timeout=1800, poll=0.01)
    tx, drops = lan.tx_bytes(0) - tx0, lan.drops(0) - drops0
    tool.settled()
    cpu = {i: cpu_seconds(tool.pid(i)) - c for i, c in cpu0.items()}
    for r, d in dsts.items():
        if file_hash(d) != want:
            raise RuntimeError(f"{tool.name} delivered different bytes to node {r}")
    return dict(first=min(done.values()), all=max(done.values()), tx=tx, drops=drops,
                cpu_send=cpu[0], cpu_recv=cpu[receivers[0]])


def sendme_l1(binary, lan, root, src, size, want):
    """sendme from node 0 to node 1: time from `sendme send` starting (it
    hashes the file) until the received file is complete; CPU of both."""
    work = tempfile.mkdtemp(prefix="sm-", dir=root)
    out = os.path.join(work, "out")
    os.makedirs(out)
    env = clean_env(RUST_LOG="off")
    tx0, drops0 = lan.tx_bytes(0), lan.drops(0)
    t0 = time.monotonic()
    sender = subprocess.Popen(lan.exec_argv(0, [binary, "send", "--relay", "disabled", "--ticket-type", "addresses", src]),
                              cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    receiver = None
    try:
        ticket = None
        while ticket is None:
            line = sender.stdout.readline()
            if not line:
                raise RuntimeError("sendme send exited without a ticket")
            m = re.search(r"sendme receive (\S+)", line)
            if m:
                ticket = m.group(1)
        receiver = subprocess.Popen(lan.exec_argv(1, [binary, "receive", "--relay", "disabled", ticket]), cwd=out,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        cpu_recv = wait_rusage(receiver, 1800)  # it exits when done
        dst = os.path.join(out, os.path.basename(src))
        wait("sendme's file", lambda: os.path.exists(dst) and os.path.getsize(dst) == size, timeout=60)
        dt = time.monotonic() - t0
        cpu_send = cpu_seconds(sender.pid)
        tx, drops = lan.tx_bytes(0) - tx0, lan.drops(0) - drops0
        if file_hash(dst) != want:
            raise RuntimeError("sendme delivered different bytes")
        return dict(all=dt, tx=tx, drops=drops, cpu_send=cpu_send, cpu_recv=cpu_recv)
    finally:
        if receiver is not None:
            proc_stop(receiver)
        proc_stop(sender)
        shutil.rmtree(work, ignore_errors=True)


def order(tools, rep):
    return tools if rep % 2 == 0 else list(reversed(tools))


def l1(record, args, root, stage, size, reps):
    lan = Lan(2, 1000)
    try:
        src = os.path.join(stage, "l1.bin")
        make_file(src, size)
        want = file_hash(src)
        gib = size / GIB
        tools = [t for t in ("fleetsync", "syncthing", "sendme") if t in args.tools and getattr(args, t)]
        for rep in range(reps):
            for t in order(tools, rep):
                if t == "sendme":
                    r = sendme_l1(args.sendme, lan, root, src, size, want)
                else:
                    cls = FleetsyncLan if t == "fleetsync" else SyncthingLan
                    tool = cls(getattr(args, t), root, lan, 2)
                    try:
                        r = spread(tool, lan, stage, src, size, [1], want)
                    finally:
                        tool.stop()
                record("L1 big file, 1 Gbit/s (s)", t, r["all"])
                record("L1 sender CPU (s/GiB)", t, r["cpu_send"] / gib)
                record("L1 receiver CPU (s/GiB)", t, r["cpu_recv"] / gib)
                record("L1 sender upload (× file size)", t, r["tx"] / size)
                record("L1 sender's shaper drops (packets)", t, r["drops"])
        os.remove(src)
    finally:
        lan.close()


def l2(record, args, root, stage, size, receivers, reps):
    lan = Lan(receivers + 1, 100)
    try:
        src = os.path.join(stage, "l2.bin")
        make_file(src, size)
        want = file_hash(src)
        tools = [t for t in ("fleetsync", "syncthing") if t in args.tools and getattr(args, t)]
        for rep in range(reps):
            for t in order(tools, rep):
                cls = FleetsyncLan if t == "fleetsync" else SyncthingLan
                tool = cls(getattr(args, t), root, lan, receivers + 1)
                try:
                    r = spread(tool, lan, stage, src, size, list(range(1, receivers + 1)), want)
                finally:
                    tool.stop()
                record(f"L2 fan-out to {receivers}, first (s)", t, r["first"])
                record(f"L2 fan-out to {receivers}, all (s)", t, r["all"])
                record("L2 origin upload (× file size)", t, r["tx"] / size)
                record("L2 origin's shaper drops (packets)", t, r["drops"])
        os.remove(src)
    finally:
        lan.close()


def run_lan(record, args, workdir=None):
    """L1 and L2; `record(scenario, tool, value)` gets every number."""
    if os.geteuid() != 0:
        sys.exit("the LAN scenarios need root (ip netns, tc)")
    root = tempfile.mkdtemp(prefix="fsbl-", dir=workdir)
    stage = os.path.join(root, "stage")
    os.makedirs(stage)
    # SIGTERM ends the run like Ctrl-C, so every `finally` below runs.
    old = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        only = getattr(args, "only", None) or ["l1", "l2"]
        if "l1" in only:
            l1(record, args, root, stage, (64 << 20) if args.quick else (1 << 30), 1 if args.quick else 3)
        if "l2" in only:
            if args.quick:
                l2(record, args, root, stage, 16 << 20, 3, 1)
            else:
                l2(record, args, root, stage, 100 << 20, 7, 2)
    finally:
        signal.signal(signal.SIGTERM, old)
        shutil.rmtree(root, ignore_errors=True)
        sweep()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fleetsync", required=True)
    ap.add_argument("--syncthing")
    ap.add_argument("--sendme")
    ap.add_argument("--tools", default="fleetsync,syncthing,sendme")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--only", default="", help="l1, l2 or both (default)")
    args = ap.parse_args()
    args.tools = args.tools.split(",")
    args.only = [x.strip().lower() for x in args.only.split(",") if x.strip()]
    results = {}

    def record(scen, tool, value):
        results.setdefault(scen, {}).setdefault(tool, []).append(value)
        print(f"  {scen:<40} {tool:<10} {value:10.3f}", file=sys.stderr, flush=True)
    run_lan(record, args, args.workdir)
    for scen, per in results.items():
        cells = [f"{t} {statistics.median(v):.3f} ({min(v):.3f}–{max(v):.3f})" for t, v in per.items()]
        print(f"{scen}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
