#!/usr/bin/env python3
"""fleetsync vs Syncthing vs sendme, side by side, in one run.

Started by bench/run.sh (which builds/installs the tools). Everything runs
on 127.0.0.1 in a temp dir and every process started here is stopped here.

Scenarios (full / --quick sizes):
  S1  one new 1 KiB file until byte-identical on the peer     10 reps / 3
      three ways: written in place and closed (write+close), written
      outside and renamed in (temp+rename), and fleetsync with
      `watch = "poll"` (write+close; a third pair of nodes, S1 only)
  S2  one 1 GiB random file                                   3 reps / 1 (64 MiB)
  S3  10,000 x 4 KiB files in 100 dirs, created at once        3 reps / 1 (1,000 in 10)
  S4  modify 100 and delete 100 existing files                 3 reps / 1
  S5  rename a directory of 1,000 files (bytes on the wire)    3 reps / 1 (200)
  S6  idle RSS and CPU over 10 s, peak RSS during S3
  S7  initial index of an existing folder: 50,000 x 4 KiB      3 reps / 1 (5,000 in 50)
      files in 500 dirs, one node started on it, until the
      index (status `files`; Syncthing: db/status localFiles,
      idle) holds them all; peak RSS
  S8  (--s8 only) 1,000,000 empty files in 10,000 dirs: time   1 rep (--s8-files)
      to index, peak and idle RSS, index size on disk,
      no-change rescan, one new file to a peer that holds
      the same tree (5 files, one after the other; Syncthing
      within --s8-limit seconds)
S2 also reports CPU-seconds per GiB of the sender and of the receiver
(utime+stime from /proc/<pid>/stat, children included): for fleetsync and
Syncthing from the move until both nodes are idle again, for sendme each
process's whole life (the sender hashes the file first, as fleetsync must).

Tools alternate repetition by repetition (the order flips each time) so
background drift hits all of them alike. sendme only takes part in S2 (raw
transfer); fleetsync and Syncthing in all.

--lan runs the shaped-LAN scenarios L1 and L2 instead (bench/lan.py: network
namespaces, needs root).
"""

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET

import stconfig

POLL = 0.002
# S8 times this many new files, one after the other.
S8_NEW_FILES = 5


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait(what, cond, timeout=600.0, poll=POLL):
    t0 = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def status_kib(pid, field):
    """A kB field of /proc/PID/status (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid):
    return status_kib(pid, "VmRSS")


def hwm_kib(pid):
    return status_kib(pid, "VmHWM")


def reset_hwm(pid):
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])  # utime + stime


def cpu_seconds(pid):
    """utime + stime of a live process plus its waited-for children's."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return sum(int(parts[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")


def wait_rusage(proc, timeout):
    """Wait for a child to exit (reaping it) and return its CPU-seconds,
    utime + stime from wait4 (its own /proc entry is gone by then)."""
    t0 = time.monotonic()
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return ru.ru_utime + ru.ru_stime
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out after {timeout}s waiting for {proc.args[0]} to exit")
        time.sleep(POLL)


def file_hash(path):
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def same_bytes(a, b):
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()
    except OSError:
        return False


def count_files(root, size=None):
    n = 0
    for _, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".fleetsync") and not d.startswith(".stfolder")]
        for f in files:
            if f.startswith(".syncthing.") or f.startswith(".stignore"):
                continue
            n += 1
    return n


def proc_stop(p, timeout=20):
    if p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


class Fleetsync:
    def __init__(self, binary, root, name="fleetsync", watch=None):
        self.name = name
        self.bin = binary
        self.root = os.path.join(root, name)
        self.nodes = []
        secret = os.urandom(32).hex()
        specs = []
        for n in ("a", "b"):
            data = os.path.join(self.root, n, "data")
            folder = os.path.join(self.root, n, "folder")
            os.makedirs(data)
            os.makedirs(folder)
            nid = subprocess.check_output([binary, "id", "--data-dir", data], text=True).strip()
            specs.append(dict(data=data, folder=folder, id=nid, udp=free_port(socket.SOCK_DGRAM), admin=free_port()))
        for i, s in enumerate(specs):
            o = specs[1 - i]
            cfg = (
                f'data_dir = "{s["data"]}"\n[mesh]\nlisten = "127.0.0.1:{s["udp"]}"\nfleet_secret = "{secret}"\n'
                f'mdns = false\npeers = ["{o["id"]}@127.0.0.1:{o["udp"]}"]\n[admin]\nlisten = "127.0.0.1:{s["admin"]}"\n'
                f'[log]\nlevel = "{os.environ.get("FLEETSYNC_BENCH_LOG", "warn")}"\n[[folders]]\nid = "bench"\npath = "{s["folder"]}"\n'
            )
            if watch:
                cfg += f'watch = "{watch}"\n'
            
            path = os.path.join(s["data"], "fleetsync.toml")
            with open(path, "w") as f:
                f.write(cfg)
            s["config"] = path
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETSYNC_")}
        for s in specs:
            log = open(os.path.join(s["data"], "node.log"), "w")
            s["proc"] = subprocess.Popen([binary, "run", "--config", s["config"]], stdout=log, stderr=log, env=env)
        self.nodes = specs
        self.a, self.b = specs[0]["folder"], specs[1]["folder"]
        wait("fleetsync nodes to connect", lambda: all(self._connected(s) for s in specs), timeout=60, poll=0.05)

    def status(self, s):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{s['admin']}/status", timeout=5) as r:
                return json.loads(r.read())
        except Exception:
            return None

    def _connected(self, s):
        st = self.status(s)
        return bool(st) and any(p["connected"] for p in st["peers"])

    def pids(self):
        return [s["proc"].pid for s in self.nodes]

    def rx_bytes(self):
        st = self.status(self.nodes[1])
        return st["folders"][0]["bytes_received"] if st else 0

    def settled(self):
        """Both nodes idle with nothing pending (between repetitions)."""
        def ok():
            sts = [self.status(s) for s in self.nodes]
            return all(st and st["folders"][0]["pending"] == 0 and st["folders"][0]["in_sync"] for st in sts)
        wait("fleetsync to settle", ok, timeout=300, poll=0.05)

    def stop(self):
        for s in self.nodes:
            proc_stop(s["proc"])


class Syncthing:
    name = "syncthing"

    def __init__(self, binary, root):
        self.bin = binary
        self.root = os.path.join(root, "syncthing")
        self.nodes = []
        for n in ("a", "b"):
            home = os.path.join(self.root, n, "home")
            folder = os.path.join(self.root, n, "folder")
            os.makedirs(home)
            os.makedirs(folder)
            subprocess.check_call([binary, "generate", "--home", home, "--no-default-folder", "--skip-port-probing"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cfg = ET.parse(os.path.join(home, "config.xml")).getroot()
            dev_id = cfg.find("device").get("id")
            self.nodes.append(dict(home=home, folder=folder, id=dev_id, gui=free_port(), port=free_port(), key=os.urandom(16).hex()))
        # Configure by editing config.xml before the first start (a REST
        # restart would end an unmonitored process).
        for i, s in enumerate(self.nodes):
            o = self.nodes[1 - i]
            path = os.path.join(s["home"], "config.xml")
            tree = ET.parse(path)
            cfg = tree.getroot()
            stconfig.isolate(cfg, f"tcp://127.0.0.1:{s['port']}")
            dev = ET.SubElement(cfg, "device", id=o["id"], name="peer", compression="metadata",
                                introducer="false", skipIntroductionRemovals="false", introducedBy="")
            ET.SubElement(dev, "address").text = f"tcp://127.0.0.1:{o['port']}"
            ET.SubElement(dev, "paused").text = "false"
            ET.SubElement(dev, "autoAcceptFolders").text = "false"
            folder = ET.Element("folder", id="bench", label="bench", path=s["folder"], type="sendreceive",
                                rescanIntervalS="3600", fsWatcherEnabled="true", fsWatcherDelayS="1",
                                ignorePerms="false", autoNormalize="true")
            ET.SubElement(folder, "filesystemType").text = "basic"
            for d in (s["id"], o["id"]):
                ET.SubElement(folder, "device", id=d, introducedBy="")
            cfg.insert(0, folder)
            tree.write(path)
        env = dict(os.environ, STMONITORED="yes", STNOUPGRADE="1", STNODEFAULTFOLDER="1")
        for s in self.nodes:
            log = open(os.path.join(s["home"], "syncthing.log"), "w")
            s["proc"] = subprocess.Popen(
                [binary, "serve", "--home", s["home"], "--no-browser", "--no-restart",
                 f"--gui-address=127.0.0.1:{s['gui']}", f"--gui-apikey={s['key']}"],
                stdout=log, stderr=log, env=env)
        for s in self.nodes:
            wait("syncthing REST API", lambda: self._get(s, "/rest/system/ping") is not None, timeout=60, poll=0.05)
        self.a, self.b = self.nodes[0]["folder"], self.nodes[1]["folder"]
        wait("syncthing devices to connect", self._connected, timeout=120, poll=0.1)
        wait("syncthing folders to be idle", self.settled_once, timeout=120, poll=0.1)

    def _req(self, s, path, method="GET", body=None):
        req = urllib.request.Request(f"http://127.0.0.1:{s['gui']}{path}", method=method,
                                     headers={"X-API-Key": s["key"], "Content-Type": "application/json"},
                                     data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                data = r.read()
                return json.loads(data) if data else {}
        except Exception:
            return None

    def _get(self, s, path):
        return self._req(s, path)

    def _put(self, s, path, body):
        r = self._req(s, path, "PUT", body)
        if r is None:
            raise RuntimeError(f"syncthing PUT {path} failed")

    def _post(self, s, path):
        return self._req(s, path, "POST", {})

    def _connected(self):
        c = self._get(self.nodes[0], "/rest/system/connections")
        return bool(c) and c["connections"].get(self.nodes[1]["id"], {}).get("connected")

    def pids(self):
        return [s["proc"].pid for s in self.nodes]

    def rx_bytes(self):
        c = self._get(self.nodes[1], "/rest/system/connections")
        return c["total"]["inBytesTotal"] if c else 0

    def settled_once(self):
        for i, s in enumerate(self.nodes):
            st = self._get(s, "/rest/db/status?folder=bench")
            if not st or st.get("state") != "idle" or st.get("needTotalItems", 1) != 0:
                return False
            comp = self._get(s, f"/rest/db/completion?folder=bench&device={self.nodes[1 - i]['id']}")
            if not comp or comp.get("completion", 0) < 100:
                return False
        return True

    def settled(self):
        wait("syncthing to settle", self.settled_once, timeout=300, poll=0.1)

    def stop(self):
        for s in self.nodes:
            proc_stop(s["proc"])


class Sendme:
    name = "sendme"

    def __init__(self, binary, root):
        self.bin = binary
        self.root = os.path.join(root, "sendme")
        os.makedirs(self.root)

    def transfer(self, src):
        """Time from `sendme send` starting (it hashes the file, as fleetsync
        must) until the received file is complete, and the CPU-seconds of
        sender and receiver."""
        out_dir = tempfile.mkdtemp(dir=self.root)
        size = os.path.getsize(src)
        name = os.path.basename(src)
        env = dict(os.environ, RUST_LOG="off")
        t0 = time.monotonic()
        sender = subprocess.Popen([self.bin, "send", "--relay", "disabled", "--ticket-type", "addresses", src],
                                  cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        ticket = None
        while ticket is None:
            line = sender.stdout.readline()
            if not line:
                raise RuntimeError("sendme send exited without a ticket")
            m = re.search(r"sendme receive (\S+)", line)
            if m:
                ticket = m.group(1)
        receiver = subprocess.Popen([self.bin, "receive", "--relay", "disabled", ticket], cwd=out_dir,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        dst = os.path.join(out_dir, name)
        try:
            cpu_recv = wait_rusage(receiver, 600)  # it exits when done
            wait("sendme's file", lambda: os.path.exists(dst) and os.path.getsize(dst) == size, timeout=60)
            dt = time.monotonic() - t0
            cpu_send = cpu_seconds(sender.pid)
        finally:
            proc_stop(receiver)
            proc_stop(sender)
        ok = file_hash(dst) == file_hash(src)
        shutil.rmtree(out_dir, ignore_errors=True)
        if not ok:
            raise RuntimeError("sendme delivered different bytes")
        return dt, cpu_send, cpu_recv

    def stop(self):
        pass


def make_file(path, size):
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 8 << 20)
            f.write(os.urandom(n))
            left -= n


def make_tree(root, files, dirs, size):
    per = files // dirs
    for d in range(dirs):
        dd = os.path.join(root, f"d{d:03d}")
        os.makedirs(dd)
        for i in range(per):
            with open(os.path.join(dd, f"f{i:04d}.bin"), "wb") as f:
                f.write(os.urandom(size))


def tree_snapshot(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in (".fleetsync", ".stfolder")]
        for f in files:
            if f.startswith(".syncthing.") or f == ".stignore":
                continue
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.blake2b(fh.read()).hexdigest()
    return out


def dir_bytes(root):
    """Space used on disk (allocated blocks: a database file may be larger
    than what it holds)."""
    n = 0
    for dp, _, fs in os.walk(root):
        for f in fs:
            try:
                n += os.lstat(os.path.join(dp, f)).st_blocks * 512
            except OSError:
                pass
    return n


def make_many(root, files, dirs, size):
    """`files` files of `size` bytes (one random byte string reused: what is
    measured is the count) in `dirs` directories."""
    per = files // dirs
    data = os.urandom(size) if size else b""
    for d in range(dirs):
        dd = os.path.join(root, f"d{d:05d}")
        os.makedirs(dd)
        for i in range(per):
            # Distinct content per file so nothing deduplicates.
            with open(os.path.join(dd, f"f{i:05d}"), "wb") as f:
                if size:
                    f.write(d.to_bytes(4, "little") + i.to_bytes(4, "little") + data[8:])


def copy_tree(src, dst):
    subprocess.check_call(["cp", "-a", src, dst])


class SoloFleetsync:
    """One fleetsync node started on an existing folder (S7, S8); `peer` is
    an optional second node it syncs with."""
    name = "fleetsync"

    def __init__(self, binary, home, folder, secret=None):
        self.data = os.path.join(home, "data")
        self.folder = folder
        os.makedirs(self.data)
        self.id = subprocess.check_output([binary, "id", "--data-dir", self.data], text=True).strip()
        self.udp, self.admin = free_port(socket.SOCK_DGRAM), free_port()
        self.bin, self.secret = binary, secret or os.urandom(32).hex()
        self.peers = []
        self.proc = None

    def start(self):
        peers = ", ".join(f'"{p.id}@127.0.0.1:{p.udp}"' for p in self.peers)
        cfg = (
            f'data_dir = "{self.data}"\n[mesh]\nlisten = "127.0.0.1:{self.udp}"\nfleet_secret = "{self.secret}"\n'
            f'mdns = false\npeers = [{peers}]\n[admin]\nlisten = "127.0.0.1:{self.admin}"\n'
            f'[log]\nlevel = "{os.environ.get("FLEETSYNC_BENCH_LOG", "warn")}"\n[[folders]]\nid = "bench"\npath = "{self.folder}"\n'
        )
        path = os.path.join(self.data, "fleetsync.toml")
        with open(path, "w") as f:
            f.write(cfg)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETSYNC_")}
        log = open(os.path.join(self.data, "node.log"), "a")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([self.bin, "run", "--config", path], stdout=log, stderr=log, env=env)

    def status(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/status", timeout=30) as r:
                return json.loads(r.read())["folders"][0]
        except Exception:
            return None

    def indexed(self):
        st = self.status()
        return st["files"] if st else 0

    def in_sync(self, peer):
        st = self.status()
        return bool(st) and st["pending"] == 0 and st["in_sync"] and st["state"] == "idle"

    def rescan(self):
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}/folders/bench/rescan", method="POST")
        t0 = time.monotonic()
        urllib.request.urlopen(req, timeout=30).read()
        # The rescan request only queues the walk: wait for it to show, then end.
        try:
            wait("fleetsync rescan to start", lambda: (self.status() or {}).get("state") == "scanning", timeout=2, poll=0.005)
        except TimeoutError:
            pass
        wait("fleetsync rescan", lambda: (self.status() or {}).get("state") not in (None, "scanning"), timeout=600, poll=0.02)
        return time.monotonic() - t0

    def index_bytes(self):
        return dir_bytes(self.data)

    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc:
            proc_stop(self.proc)


class SoloSyncthing:
    name = "syncthing"

    def __init__(self, binary, home, folder):
        self.home, self.folder, self.bin = home, folder, binary
        os.makedirs(home)
        subprocess.check_call([binary, "generate", "--home", home, "--no-default-folder", "--skip-port-probing"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        path = os.path.join(home, "config.xml")
        tree = ET.parse(path)
        cfg = tree.getroot()
        self.id = cfg.find("device").get("id")
        self.gui, self.port, self.key = free_port(), free_port(), os.urandom(16).hex()
        stconfig.isolate(cfg, f"tcp://127.0.0.1:{self.port}")
        tree.write(path)
        self.peers = []
        self.proc = None

    def configure(self):
        """The folder (shared with `peers`) and the peers' devices."""
        path = os.path.join(self.home, "config.xml")
        tree = ET.parse(path)
        cfg = tree.getroot()
        for p in self.peers:
            dev = ET.SubElement(cfg, "device", id=p.id, name="peer", compression="metadata",
                                introducer="false", skipIntroductionRemovals="false", introducedBy="")
            ET.SubElement(dev, "address").text = f"tcp://127.0.0.1:{p.port}"
            ET.SubElement(dev, "paused").text = "false"
            ET.SubElement(dev, "autoAcceptFolders").text = "false"
        fo = ET.Element("folder", id="bench", label="bench", path=self.folder, type="sendreceive",
                        rescanIntervalS="3600", fsWatcherEnabled="true", fsWatcherDelayS="1",
                        ignorePerms="false", autoNormalize="true")
        ET.SubElement(fo, "filesystemType").text = "basic"
        for d in [self.id] + [p.id for p in self.peers]:
            ET.SubElement(fo, "device", id=d, introducedBy="")
        cfg.insert(0, fo)
        tree.write(path)

    def start(self):
        if not os.path.exists(os.path.join(self.home, ".configured")):
            self.configure()
            open(os.path.join(self.home, ".configured"), "w").close()
        env = dict(os.environ, STMONITORED="yes", STNOUPGRADE="1", STNODEFAULTFOLDER="1")
        log = open(os.path.join(self.home, "syncthing.log"), "a")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [self.bin, "serve", "--home", self.home, "--no-browser", "--no-restart",
             f"--gui-address=127.0.0.1:{self.gui}", f"--gui-apikey={self.key}"],
            stdout=log, stderr=log, env=env)

    def _req(self, path, method="GET", timeout=30):
        req = urllib.request.Request(f"http://127.0.0.1:{self.gui}{path}", method=method,
                                     headers={"X-API-Key": self.key}, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                data = r.read()
                return json.loads(data) if data else {}
        except Exception:
            return None

    def status(self):
        return self._req("/rest/db/status?folder=bench")

    def indexed(self):
        st = self.status()
        # Counted only once the scan is over (files show up during it).
        return st["localFiles"] if st and st.get("state") == "idle" else 0

    def in_sync(self, peer):
        st = self.status()
        comp = self._req(f"/rest/db/completion?folder=bench&device={peer.id}")
        return bool(st and comp) and st.get("state") == "idle" and st.get("needTotalItems", 1) == 0 \
            and comp.get("completion", 0) >= 100

    def rescan(self):
        t0 = time.monotonic()
        if self._req("/rest/db/scan?folder=bench", "POST", timeout=3600) is None:
            raise RuntimeError("syncthing rescan failed")
        return time.monotonic() - t0

    def index_bytes(self):
        return dir_bytes(os.path.join(self.home, "index-v0.14.0.db"))

    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc:
            proc_stop(self.proc)


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.tmp = tempfile.mkdtemp(prefix="fleetsync-bench-", dir=args.workdir)
        self.stage = os.path.join(self.tmp, "stage")
        os.makedirs(self.stage)
        self.results = {}  # scenario -> tool -> [values]
        self.notes = {}  # scenario -> tool -> text (a step that did not finish)
        self.extra = {}
        self.tools = []
        self.sendme = None

    def record(self, scen, tool, value):
        self.results.setdefault(scen, {}).setdefault(tool, []).append(value)
        print(f"  {scen:<40} {tool:<10} {value:10.3f}", file=sys.stderr, flush=True)

    def order(self, rep):
        return self.tools if rep % 2 == 0 else list(reversed(self.tools))

    def staged_move(self, src, dst):
        """Make content appear in a folder at once: a rename on one filesystem."""
        os.rename(src, dst)

    def s1(self, reps, poll=None):
        """Latency of one small file, per writer style. `poll`: a fleetsync
        pair with `watch = "poll"`, timed with write+close only."""
        styles = [("write+close", self.write_close), ("temp+rename", self.temp_rename)]
        for rep in range(reps):
            order = self.order(rep) + ([poll] if poll else [])
            if poll and rep % 2 == 1:
                order = [poll] + self.order(rep)
            for t in order:
                for style, write in styles:
                    if t is poll and style != "write+close":
                        continue
                    name = f"s1-{rep}-{random.randrange(1 << 30)}.txt"
                    data = os.urandom(1024)
                    dst_b = os.path.join(t.b, name)
                    t0 = time.monotonic()
                    write(os.path.join(t.a, name), data)
                    wait(f"{t.name} S1", lambda: same_bytes(os.path.join(t.a, name), dst_b), timeout=60)
                    label = "watch=poll" if t is poll else style
                    tool = "fleetsync" if t is poll else t.name
                    self.record(f"S1 1 KiB file, {label} (s)", tool, time.monotonic() - t0)
                    t.settled()

    def write_close(self, dst, data):
        """Written in place: create, write, close."""
        with open(dst, "wb") as f:
            f.write(data)

    def temp_rename(self, dst, data):
        """Written outside the folder, then renamed in (the clock starts
        before the write: same work as write+close)."""
        src = os.path.join(self.stage, os.path.basename(dst))
        with open(src, "wb") as f:
            f.write(data)
        self.staged_move(src, dst)

    def s1_all(self, reps):
        """S1 with the tools, plus a polling fleetsync pair for S1 only."""
        poll = None
        if "fleetsync" in self.args.tools:
            poll = Fleetsync(self.args.fleetsync, self.tmp, name="fleetsync-poll", watch="poll")
        try:
            self.s1(reps, poll)
        finally:
            if poll:
                poll.stop()

    def s2(self, reps, size):
        for rep in range(reps):
            src = os.path.join(self.stage, f"s2-{rep}.bin")
            make_file(src, size)
            want = file_hash(src)
            order = self.order(rep) + ([self.sendme] if self.sendme else [])
            if self.sendme and rep % 2 == 1:
                order = [self.sendme] + self.order(rep)
            gib = size / (1 << 30)
            for t in order:
                if t is self.sendme:
                    dt, cpu_send, cpu_recv = t.transfer(src)
                    self.record("S2 big file (s)", t.name, dt)
                    self.record("S2 sender CPU (s/GiB)", t.name, cpu_send / gib)
                    self.record("S2 receiver CPU (s/GiB)", t.name, cpu_recv / gib)
                    continue
                copy = os.path.join(self.stage, f"s2-{rep}-{t.name}.bin")
                shutil.copyfile(src, copy)
                os.sync()
                dst_b = os.path.join(t.b, f"big-{rep}.bin")
                cpu0 = [cpu_seconds(p) for p in t.pids()]
                t0 = time.monotonic()
                self.staged_move(copy, os.path.join(t.a, f"big-{rep}.bin"))
                wait(f"{t.name} S2", lambda: os.path.exists(dst_b) and os.path.getsize(dst_b) == size, timeout=900, poll=0.01)
                dt = time.monotonic() - t0
                if file_hash(dst_b) != want:
                    raise RuntimeError(f"{t.name} delivered different bytes in S2")
                self.record("S2 big file (s)", t.name, dt)
                t.settled()
                cpu_send, cpu_recv = (cpu_seconds(p) - c for p, c in zip(t.pids(), cpu0))
                self.record("S2 sender CPU (s/GiB)", t.name, cpu_send / gib)
                self.record("S2 receiver CPU (s/GiB)", t.name, cpu_recv / gib)
                os.remove(os.path.join(t.a, f"big-{rep}.bin"))
                wait(f"{t.name} S2 cleanup", lambda: not os.path.exists(dst_b), timeout=120, poll=0.01)
                t.settled()
            os.remove(src)

    def s3(self, reps, files, dirs):
        for rep in range(reps):
            for t in self.order(rep):
                src = os.path.join(self.stage, f"s3-{t.name}-{rep}")
                make_tree(src, files, dirs, 4096)
                os.sync()
                for pid in t.pids():
                    reset_hwm(pid)
                target_b = os.path.join(t.b, f"s3-{rep}")
                t0 = time.monotonic()
                self.staged_move(src, os.path.join(t.a, f"s3-{rep}"))
                # Walking 10,000 files costs CPU: poll gently, the run takes seconds.
                wait(f"{t.name} S3", lambda: os.path.isdir(target_b) and count_files(target_b) == files, timeout=900, poll=0.2)
                dt = time.monotonic() - t0
                self.record("S3 many small files (s)", t.name, dt)
                peak = max(hwm_kib(p) for p in t.pids())
                self.record("S6 peak RSS during S3 (MiB)", t.name, peak / 1024)
                t.settled()
                if tree_snapshot(os.path.join(t.a, f"s3-{rep}")) != tree_snapshot(target_b):
                    raise RuntimeError(f"{t.name}: S3 trees differ")

    def s4(self, reps, n):
        for rep in range(reps):
            for t in self.order(rep):
                base = os.path.join(t.a, f"s3-{rep % max(1, self.s3_reps)}")
                files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(base) for f in fs)
                live = [f for f in files if os.path.getsize(f) == 4096]
                random.seed(rep)
                pick = random.sample(live, 2 * n)
                mod, dele = pick[:n], pick[n:]
                new = {p: os.urandom(4096) for p in mod}
                t0 = time.monotonic()
                for p, data in new.items():
                    with open(p, "wb") as f:
                        f.write(data)
                for p in dele:
                    os.remove(p)
                to_b = lambda p: os.path.join(t.b, os.path.relpath(p, t.a))

                def done():
                    for p in dele:
                        if os.path.exists(to_b(p)):
                            return False
                    for p, data in new.items():
                        try:
                            with open(to_b(p), "rb") as f:
                                if f.read() != data:
                                    return False
                        except OSError:
                            return False
                    return True
                wait(f"{t.name} S4", done, timeout=600, poll=0.01)
                self.record("S4 modify 100 + delete 100 (s)", t.name, time.monotonic() - t0)
                t.settled()

    def s5(self, reps, files):
        for t in self.tools:
            src = os.path.join(self.stage, f"s5-{t.name}")
            make_tree(src, files, 1, 4096)
            self.staged_move(src, os.path.join(t.a, "s5"))
        for t in self.tools:
            wait(f"{t.name} S5 setup", lambda: count_files(os.path.join(t.b, "s5")) == files if os.path.isdir(os.path.join(t.b, "s5")) else False, timeout=600, poll=0.05)
            t.settled()
        names = ["d000", "renamed"]
        for rep in range(reps):
            frm, to = names[rep % 2], names[(rep + 1) % 2]
            for t in self.order(rep):
                rx0 = t.rx_bytes()
                t0 = time.monotonic()
                os.rename(os.path.join(t.a, "s5", frm), os.path.join(t.a, "s5", to))
                nb, ob = os.path.join(t.b, "s5", to), os.path.join(t.b, "s5", frm)
                wait(f"{t.name} S5", lambda: not os.path.exists(ob) and os.path.isdir(nb) and count_files(nb) == files, timeout=600, poll=0.01)
                self.record("S5 rename dir of small files (s)", t.name, time.monotonic() - t0)
                t.settled()
                self.record("S5 bytes received during rename (KiB)", t.name, (t.rx_bytes() - rx0) / 1024)

    def s6_idle(self, seconds):
        for t in self.tools:
            t.settled()
        hz = os.sysconf("SC_CLK_TCK")
        before = {t.name: sum(cpu_ticks(p) for p in t.pids()) for t in self.tools}
        time.sleep(seconds)  # measuring idleness is the point here
        for t in self.tools:
            used = sum(cpu_ticks(p) for p in t.pids()) - before[t.name]
            # Percent of one core, per node (two nodes per tool).
            self.record("S6 idle CPU per node (% of a core)", t.name, 100.0 * used / hz / seconds / 2)
            self.record("S6 idle RSS per node (MiB)", t.name, max(rss_kib(p) for p in t.pids()) / 1024)

    def solo(self, kind, home, folder, secret=None):
        a = self.args
        if kind == "fleetsync":
            return SoloFleetsync(a.fleetsync, home, folder, secret)
        if kind == "fleetsync-base":
            return SoloFleetsync(a.fleetsync_base, home, folder, secret)
        return SoloSyncthing(a.syncthing, home, folder)

    def s8(self, files, dirs, limit):
        """A million files: both nodes of a tool hold the same tree (copies
        of one staged tree, reused by the next tool). Node a is started
        alone: time to index, peak RSS, index size, a rescan with nothing
        changed; then node b, and once both are in sync, one new file on a
        until b has it; idle RSS of a a minute after its last work (the
        node hands freed memory back once a minute). A step that takes
        longer than `limit` seconds ends that tool's run ("did not finish")."""
        label = f"{files:,}"
        trees = self.args.s8_trees or self.stage
        src_a, src_b = os.path.join(trees, f"s8-{files}-a"), os.path.join(trees, f"s8-{files}-b")
        staged = src_b + ".staged"  # beside the trees: a half-made pair is made again
        if not os.path.exists(staged):
            t0 = time.monotonic()
            for src in (src_a, src_b):
                shutil.rmtree(src, ignore_errors=True)
            make_many(src_a, files, dirs, 0)
            copy_tree(src_a, src_b)
            os.sync()
            open(staged, "w").close()
            print(f"  S8 trees of {label} files staged in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        for kind in self.order_names(0):
            self.s8_tool(kind, label, files, limit, src_a, src_b)
            for src in (src_a, src_b):
                # The next tool gets the same trees, without this one's state.
                extras = [".fleetsync", ".stfolder", ".stignore"] + [f"s8-new-{i}.txt" for i in range(S8_NEW_FILES)]
                for extra in extras:
                    p = os.path.join(src, extra)
                    shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else (os.path.exists(p) and os.remove(p))
            os.sync()

    def s8_tool(self, kind, label, files, limit, folder_a, folder_b):
        home = os.path.join(self.tmp, f"s8-{kind}")
        secret = os.urandom(32).hex()
        a = self.solo(kind, os.path.join(home, "a"), folder_a, secret)
        b = self.solo(kind, os.path.join(home, "b"), folder_b, secret)
        a.peers, b.peers = [b], [a]
        scen = lambda what: f"S8 {label} files: {what}"
        try:
            a.start()
            try:
                wait(f"{kind} S8 index", lambda: a.indexed() >= files, timeout=limit, poll=0.5)
            except TimeoutError:
                self.note(scen("index (s)"), kind, f"did not finish in {limit:.0f} s")
                return
            done = time.monotonic()
            self.record(scen("index (s)"), kind, done - a.t0)
            self.record(scen("peak RSS while indexing (MiB)"), kind, hwm_kib(a.pid()) / 1024)
            wait(f"{kind} S8 settle", lambda: a.in_sync(b) if kind == "fleetsync" else a.indexed() >= files,
                 timeout=limit, poll=0.5)
            self.record(scen("index on disk (MiB)"), kind, a.index_bytes() / (1 << 20))
            self.record(scen("no-change rescan (s)"), kind, a.rescan())
            b.start()
            try:
                wait(f"{kind} S8 peer in sync", lambda: b.indexed() >= files and a.in_sync(b) and b.in_sync(a),
                     timeout=limit, poll=0.5)
            except TimeoutError:
                self.note(scen("one new file to the peer (s)"), kind, f"peers not in sync in {limit:.0f} s")
                return
            # One file at a time, a few times: one figure alone is at the
            # mercy of whatever else the machine did at that moment.
            for i in range(S8_NEW_FILES):
                name = f"s8-new-{i}.txt"
                data = os.urandom(1024)
                staged = os.path.join(self.stage, name)
                with open(staged, "wb") as f:
                    f.write(data)
                t0 = time.monotonic()
                os.rename(staged, os.path.join(folder_a, name))
                wait(f"{kind} S8 new file", lambda: same_bytes(os.path.join(folder_a, name), os.path.join(folder_b, name)),
                     timeout=min(limit, 120), poll=POLL)
                self.record(scen("one new file to the peer (s)"), kind, time.monotonic() - t0)
                time.sleep(1)
            # Idle: a minute after the last work, when the node has handed
            # freed memory back (measuring idleness is the point).
            time.sleep(65)
            self.record(scen("idle RSS (MiB)"), kind, rss_kib(a.pid()) / 1024)
        finally:
            a.stop()
            b.stop()

    def note(self, scen, tool, text):
        self.notes.setdefault(scen, {})[tool] = text
        print(f"  {scen:<40} {tool:<10} {text}", file=sys.stderr, flush=True)

    def s7(self, reps, files, dirs):
        """Initial index: a node started on a folder that already holds
        `files` files. Timed from the process start (its own start-up
        included) until its index holds every file."""
        src = os.path.join(self.stage, "s7")
        make_many(src, files, dirs, 4096)
        for rep in range(reps):
            for kind in self.order_names(rep):
                home = os.path.join(self.tmp, f"s7-{kind}-{rep}")
                folder = os.path.join(home, "folder")
                os.makedirs(home)
                copy_tree(src, folder)
                os.sync()
                node = self.solo(kind, os.path.join(home, "node"), folder)
                try:
                    node.start()
                    wait(f"{kind} S7", lambda: node.indexed() >= files, timeout=1800, poll=0.02)
                    dt = time.monotonic() - node.t0
                    self.record(f"S7 initial index, {files:,} x 4 KiB (s)", kind, dt)
                    self.record("S7 peak RSS (MiB)", kind, hwm_kib(node.pid()) / 1024)
                finally:
                    node.stop()
                # Removing 50,000 files is slow disk work of its own: the
                # trees go with the temp dir at the end, not between reps.

    def order_names(self, rep):
        names = [n for n in ("fleetsync", "syncthing") if n in self.args.tools]
        if self.args.fleetsync_base:
            names.insert(1, "fleetsync-base")
        return names if rep % 2 == 0 else list(reversed(names))

    def run(self):
        a = self.args
        if a.lan:
            return self.run_lan()
        want = set(a.only) if a.only else {"S1", "S2", "S3", "S4", "S5", "S6", "S7"}
        if a.s8:
            want.add("S8")
        pairs = want & {"S1", "S2", "S3", "S4", "S5", "S6"}
        self.tools = []
        try:
            q = self.quick
            if pairs:
                self.run_pairs(want)
            for t in self.tools:
                t.stop()
            self.tools = []
            if "S7" in want:
                self.s7(1 if q else 3, 5000 if q else 50000, 50 if q else 500)
            if "S8" in want:
                self.s8(a.s8_files, a.s8_files // 100, a.s8_limit)
        finally:
            for t in self.tools:
                t.stop()
            if not a.keep:
                shutil.rmtree(self.tmp, ignore_errors=True)
        return self.report()

    def run_lan(self):
        """L1 and L2 on shaped links (bench/lan.py); nothing else."""
        from lan import run_lan
        try:
            run_lan(self.record, self.args, self.tmp)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.lan_tools = [t for t in ("fleetsync", "syncthing", "sendme") if t in self.args.tools and getattr(self.args, t)]
        return self.report()

    def run_pairs(self, want):
        a, q = self.args, self.quick
        if "fleetsync" in a.tools:
            self.tools.append(Fleetsync(a.fleetsync, self.tmp))
        if "syncthing" in a.tools:
            self.tools.append(Syncthing(a.syncthing, self.tmp))
        if "sendme" in a.tools and a.sendme:
            self.sendme = Sendme(a.sendme, self.tmp)
        self.s3_reps = 1 if q else 3
        if "S6" in want:
            self.s6_idle(a.idle or (3 if q else 10))
        if "S1" in want:
            self.s1_all(3 if q else 10)
        # S4 edits the trees S3 made.
        if want & {"S3", "S4", "S6"}:
            self.s3(self.s3_reps, 1000 if q else 10000, 10 if q else 100)
        if "S4" in want:
            self.s4(1 if q else 3, 100)
        if "S5" in want:
            self.s5(1 if q else 3, 200 if q else 1000)
        if "S2" in want:
            self.s2(1 if q else 3, (64 << 20) if q else (1 << 30))

    def report(self):
        lines = []
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
        fs = subprocess.run(["df", "-T", self.args.workdir or tempfile.gettempdir()], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
        lines.append(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        lines.append(f"machine: {platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, filesystem {fs}, kernel {platform.release()}")
        lines.append(f"mode: {'quick' if self.quick else 'full'}")
        lines.append("")
        tools = getattr(self, "lan_tools", None) or [
            t for t in ("fleetsync", "fleetsync-base", "syncthing", "sendme")
            if any(t in per for per in list(self.results.values()) + list(self.notes.values()))]
        header = f"| scenario | " + " | ".join(f"{t} median (min–max)" for t in tools) + " | fleetsync ratio |"
        lines.append(header)
        lines.append("|" + "---|" * (len(tools) + 2))
        for scen, per in self.results.items():
            cells = []
            for t in tools:
                v = per.get(t)
                if not v:
                    cells.append(self.notes.get(scen, {}).get(t, "—"))
                    continue
                cells.append(f"{statistics.median(v):.3f} ({min(v):.3f}–{max(v):.3f})")
            ratios = []
            fs_v = per.get("fleetsync")
            for t in tools:
                if t == "fleetsync" or not per.get(t) or not fs_v:
                    continue
                other = statistics.median(per[t])
                if other > 0:
                    ratios.append(f"{statistics.median(fs_v) / other:.2f}× {t}")
            lines.append(f"| {scen} | " + " | ".join(cells) + f" | {', '.join(ratios) or '—'} |")
        for scen, per in self.notes.items():
            if scen not in self.results:
                lines.append(f"| {scen} | " + " | ".join(per.get(t, "—") for t in tools) + " | — |")
        text = "\n".join(lines)
        print(text)
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump(dict(results=self.results, quick=self.quick), f, indent=1)
        return text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fleetsync", required=True)
    ap.add_argument("--syncthing")
    ap.add_argument("--sendme")
    ap.add_argument("--tools", default="fleetsync,syncthing,sendme")
    ap.add_argument("--quick", action="store_true", help="small sizes, few repetitions (CI smoke run)")
    ap.add_argument("--workdir", default=None, help="where temp dirs go (default: $TMPDIR)")
    ap.add_argument("--json", help="also write raw results here")
    ap.add_argument("--idle", type=float, default=None, help="seconds S6 measures idle CPU over (default 10, quick 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--only", default="", help="comma-separated scenarios to run, e.g. S7 or S1,S3, or l1 with --lan (default: S1-S7)")
    ap.add_argument("--lan", action="store_true",
                    help="run only L1/L2 on shaped links in network namespaces (bench/lan.py, needs root)")
    ap.add_argument("--fleetsync-base", help="S7/S8: also run this fleetsync binary (a build to compare with)")
    ap.add_argument("--s8", action="store_true", help="also run S8, a folder of a million files (long)")
    ap.add_argument("--s8-files", type=int, default=1_000_000, help="S8's file count (in count/100 dirs)")
    ap.add_argument("--s8-trees", help="keep S8's two trees here and reuse them (they take minutes to make)")
    ap.add_argument("--s8-limit", type=float, default=900, help="seconds a tool gets per S8 step before it counts as not finished")
    args = ap.parse_args()
    args.tools = args.tools.split(",")
    # Upper case for S1-S8, lower case for bench/lan.py's l1/l2.
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    args.only = [x.lower() for x in only] if args.lan else [x.upper() for x in only]
    if "syncthing" in args.tools and not args.syncthing:
        sys.exit("--syncthing is required unless --tools excludes it")
    Bench(args).run()


if __name__ == "__main__":
    main()
