#!/usr/bin/env python3
"""Soak: 3 fleetsync nodes on 127.0.0.1 under seeded churn for a while.

Started by bench/soak.sh (which builds fleetsync, release). Each node gets
creates, modifies, deletes and renames (of files and, now and then, of a
whole directory) at --rate operations per second, spread over the three
nodes, for --duration. Every --every seconds, and at the start and the end,
it prints per node: RSS, index size (index.redb), versions size
(<folder>/.fleetsync/versions), blob store size and live files. At the end,
after the fleet has converged, a verdict line:

    VERDICT: RSS flat within 10% (worst: node b +3.2% from 41.0 MiB after warm-up)

RSS is compared with the first sample taken under churn (after warm-up:
the allocator's first growth is not a leak), so a run needs at least two
intervals. Everything runs in a temp dir; every process started here is
stopped here. --seed replays the same sequence of operations.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import free_port  # noqa: E402  (one copy, shared with bench.py)

NODES = ("a", "b", "c")
DIRS = 20


def duration(text):
    """'90', '90s', '2m', '1h' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def mib(n):
    return f"{n / (1 << 20):.1f} MiB"


class Node:
    def __init__(self, binary, base, name, secret, folder_toml=()):
        self.name = name
        self.folder_toml = folder_toml
        self.data = os.path.join(base, name, "data")
        self.folder = os.path.join(base, name, "folder")
        os.makedirs(self.data)
        os.makedirs(self.folder)
        self.id = subprocess.check_output([binary, "id", "--data-dir", self.data], text=True).strip()
        self.udp = free_port(socket.SOCK_DGRAM)
        self.admin = free_port()
        self.secret = secret
        self.proc = None

    def write_config(self, others):
        peers = ", ".join(f'"{o.id}@127.0.0.1:{o.udp}"' for o in others)
        cfg = (
            f'data_dir = "{self.data}"\n[mesh]\nlisten = "127.0.0.1:{self.udp}"\n'
            f'fleet_secret = "{self.secret}"\nmdns = false\npeers = [{peers}]\n'
            f'[admin]\nlisten = "127.0.0.1:{self.admin}"\n'
            f'[log]\nlevel = "{os.environ.get("FLEETSYNC_SOAK_LOG", "warn")}"\n'
            f'[[folders]]\nid = "soak"\npath = "{self.folder}"\n'
            + "".join(f"{line}\n" for line in self.folder_toml)
        )
        self.config = os.path.join(self.data, "fleetsync.toml")
        with open(self.config, "w") as f:
            f.write(cfg)

    def start(self, binary):
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETSYNC_")}
        log = open(os.path.join(self.data, "node.log"), "w")
        self.proc = subprocess.Popen([binary, "run", "--config", self.config], stdout=log, stderr=log, env=env)

    def status(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/status", timeout=5) as r:
                return json.loads(r.read())
        except Exception:
            return None

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def sample(self):
        st = self.status() or {}
        f = (st.get("folders") or [{}])[0]
        return dict(
            rss=rss_kib(self.proc.pid) * 1024,
            index=os.path.getsize(os.path.join(self.data, "index.redb")),
            versions=du(os.path.join(self.folder, ".fleetsync", "versions")),
            blobs=du(os.path.join(self.data, "blobs")),
            files=f.get("files", 0),
            alive=self.proc.poll() is None,
        )


def wait(what, cond, timeout, poll=0.2):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


class Churn:
    """Seeded operations on the nodes' folders."""

    def __init__(self, nodes, seed, max_files, max_size):
        self.rng = random.Random(seed)
        self.nodes = nodes
        self.max_files = max_files
        self.max_size = max_size
        self.counter = 0
        self.ops = dict(create=0, modify=0, delete=0, rename=0, rename_dir=0)

    def files(self, node):
        out = []
        for d in range(DIRS):
            for p in (os.path.join(node.folder, f"d{d}"), os.path.join(node.folder, f"d{d}.moved")):
                try:
                    out.extend(os.path.join(p, f) for f in os.listdir(p))
                except OSError:
                    pass
        return out

    def content(self):
        n = self.rng.randrange(0, self.max_size)
        return self.rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""

    def step(self):
        node = self.rng.choice(self.nodes)
        files = self.files(node)
        r = self.rng.random()
        try:
            if not files or (r < 0.35 and len(files) < self.max_files):
                self.create(node)
            elif r < 0.65:
                self.write(self.rng.choice(files))
                self.ops["modify"] += 1
            elif r < 0.85:
                os.remove(self.rng.choice(files))
                self.ops["delete"] += 1
            elif r < 0.99:
                self.rename(node, self.rng.choice(files))
            else:
                self.rename_dir(node)
        except OSError:
            pass  # a sync changed the tree under us: the next step goes on

    def create(self, node):
        self.counter += 1
        d = os.path.join(node.folder, f"d{self.rng.randrange(DIRS)}")
        os.makedirs(d, exist_ok=True)
        self.write(os.path.join(d, f"f{self.counter}-{node.name}.bin"))
        self.ops["create"] += 1

    def write(self, path):
        tmp = path + ".soak-tmp"
        with open(tmp, "wb") as f:
            f.write(self.content())
        os.replace(tmp, path)

    def rename(self, node, path):
        self.counter += 1
        d = os.path.join(node.folder, f"d{self.rng.randrange(DIRS)}")
        os.makedirs(d, exist_ok=True)
        os.rename(path, os.path.join(d, f"r{self.counter}-{node.name}.bin"))
        self.ops["rename"] += 1

    def rename_dir(self, node):
        """A whole directory moves away (and back, the next time)."""
        d = os.path.join(node.folder, f"d{self.rng.randrange(DIRS)}")
        moved = d + ".moved"
        if os.path.isdir(d) and not os.path.exists(moved):
            os.rename(d, moved)
        elif os.path.isdir(moved) and not os.path.exists(d):
            os.rename(moved, d)
        else:
            return
        self.ops["rename_dir"] += 1


def report(label, nodes, elapsed):
    rows = []
    for n in nodes:
        s = n.sample()
        rows.append(s)
        print(
            f"[{elapsed:7.0f}s] {label:<6} node {n.name}: rss {mib(s['rss']):>10}  index {mib(s['index']):>10}  "
            f"versions {mib(s['versions']):>10}  blobs {mib(s['blobs']):>10}  files {s['files']:>6}"
            + ("" if s["alive"] else "  (EXITED)"),
            flush=True,
        )
    return rows


def converged(nodes):
    sts = [n.status() for n in nodes]
    if not all(sts):
        return False
    fs = [st["folders"][0] for st in sts]
    return all(f["in_sync"] for f in fs) and len({f["files"] for f in fs}) == 1


def growth(before, after, key):
    return (after[key] - before[key]) * 100.0 / max(before[key], 1)


def verdict(warm, end, nodes, tolerance):
    """Flat: every node's RSS and index size grew at most `tolerance` % from
    the baseline sample to the end, and every node is still running."""
    for i, n in enumerate(nodes):
        print(
            f"node {n.name}: rss {mib(warm[i]['rss'])} -> {mib(end[i]['rss'])}, index {mib(warm[i]['index'])} -> "
            f"{mib(end[i]['index'])}, versions {mib(warm[i]['versions'])} -> {mib(end[i]['versions'])}",
            flush=True,
        )
    flat = all(s["alive"] for s in end)
    for key in ("rss", "index"):
        worst = max(range(len(nodes)), key=lambda i: growth(warm[i], end[i], key))
        g = growth(warm[worst], end[worst], key)
        flat = flat and g <= tolerance
        print(
            f"VERDICT {key}: {'flat' if g <= tolerance else 'NOT flat'} within {tolerance:g}% (worst: node "
            f"{nodes[worst].name} {g:+.1f}% from {mib(warm[worst][key])} to {mib(end[worst][key])} at the end)",
            flush=True,
        )
    print(f"VERDICT: {'flat' if flat else 'NOT flat'}", flush=True)
    return flat


def window_verdict(samples, nodes, warmup, period, tolerance):
    """RSS moves in a sawtooth: the blob store grows until its collector
    runs (every 10 minutes) and drops after. So compare like with like:
    the highest and the lowest sample of each full --period window after
    warm-up; flat if the last full window's peak and trough are within
    `tolerance` % of the first's. None with fewer than two full windows."""
    if period <= 0:
        return None
    end = samples[-1][0]
    windows = []
    start = warmup
    while start + period <= end + 1:
        rows = [s for t, s in samples if start <= t < start + period]
        if rows:
            windows.append((start, rows))
        start += period
    if len(windows) < 2:
        return None
    flat = True
    for i, n in enumerate(nodes):
        peaks = [max(r[i]["rss"] for r in rows) for _, rows in windows]
        troughs = [min(r[i]["rss"] for r in rows) for _, rows in windows]
        print(f"node {n.name}: per-window peak {' '.join(mib(p) for p in peaks)}; "
              f"trough {' '.join(mib(t) for t in troughs)}", flush=True)
        for first, last in ((peaks[0], peaks[-1]), (troughs[0], troughs[-1])):
            flat = flat and (last - first) * 100.0 / max(first, 1) <= tolerance
    return flat


def make_fleet(args, base):
    secret = os.urandom(32).hex()
    nodes = [Node(args.fleetsync, base, n, secret, args.folder_key) for n in NODES]
    for n in nodes:
        n.write_config([o for o in nodes if o is not n])
    return nodes


def start_fleet(args, nodes):
    for n in nodes:
        n.start(args.fleetsync)
    wait("nodes to connect", lambda: all((n.status() or {}).get("peers") and
                                           all(p["connected"] for p in n.status()["peers"]) for n in nodes), 60)


class Sampler:
    """Samples every --every seconds; the baseline for the verdict is the
    first sample at or after --warmup (caches fill and the retained data
    reaches its limits first)."""

    def __init__(self, nodes, args):
        self.nodes = nodes
        self.every = args.every
        self.warmup = args.warmup
        self.t0 = time.monotonic()
        self.next = self.t0 + self.every
        self.samples = [(0.0, report("start", nodes, 0))]

    def tick(self, label="churn"):
        now = time.monotonic()
        if now >= self.next:
            self.samples.append((now - self.t0, report(label, self.nodes, now - self.t0)))
            self.next += self.every

    def finish(self, tolerance, period):
        end = report("end", self.nodes, time.monotonic() - self.t0)
        warm_at, warm = next(((t, s) for t, s in self.samples if t >= self.warmup), self.samples[-1])
        print(f"baseline: the sample at {warm_at:.0f}s (first at or after --warmup {self.warmup:g}s)", flush=True)
        flat = verdict(warm, end, self.nodes, tolerance)
        by_window = window_verdict(self.samples, self.nodes, self.warmup, period, tolerance)
        if by_window is None:
            return flat
        print(f"VERDICT (per {period:g}s window): {'flat' if by_window else 'NOT flat'}", flush=True)
        return by_window


def run_churn(args, nodes):
    churn = Churn(nodes, args.seed, args.files, args.max_size)
    for _ in range(args.files // 2):
        churn.create(churn.rng.choice(nodes))
    wait("the initial files to sync", lambda: converged(nodes), 300)
    sampler = Sampler(nodes, args)
    end_at = sampler.t0 + args.duration
    period = 1.0 / args.rate
    next_op = sampler.t0
    while time.monotonic() < end_at:
        sampler.tick()
        now = time.monotonic()
        if now < next_op:
            time.sleep(min(next_op - now, 0.05))
            continue
        churn.step()
        next_op += period
    print(f"operations: {json.dumps(churn.ops)}", flush=True)
    wait("the fleet to converge after the churn", lambda: converged(nodes), 600)
    return sampler.finish(args.tolerance, args.period)


def run_cycles(args, nodes):
    """The same paths, over and over: --cycle-paths files written on node a,
    synced to b and c, deleted on a, gone on b and c; every file written
    and deleted counts as one cycle. Nothing else changes, so whatever grows
    is kept per cycle. The waits poll every 5 ms: the driver, not the
    fleet, set the pace before."""
    rng = random.Random(args.seed)
    width = max(1, args.cycle_paths)
    rels = [os.path.join("cycle", f"p{j:03}.bin") for j in range(width)]
    origin, others = nodes[0], nodes[1:]
    os.makedirs(os.path.join(origin.folder, "cycle"), exist_ok=True)
    wait("the cycle directory to sync", lambda: all(os.path.isdir(os.path.join(n.folder, "cycle")) for n in others), 60)
    sampler = Sampler(nodes, args)
    done = 0
    while done < args.cycles:
        batch = rels[: min(width, args.cycles - done)]
        datas = [rng.getrandbits(8 * 1024).to_bytes(1024, "little") for _ in batch]
        for rel, data in zip(batch, datas):
            tmp = os.path.join(origin.folder, rel + ".soak-tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, os.path.join(origin.folder, rel))
        wait(f"cycles {done}+: the files on every node",
             lambda: all(read(os.path.join(n.folder, r)) == d for n in others for r, d in zip(batch, datas)), 60, 0.005)
        for rel in batch:
            os.remove(os.path.join(origin.folder, rel))
        wait(f"cycles {done}+: the files gone everywhere",
             lambda: not any(os.path.exists(os.path.join(n.folder, r)) for n in others for r in batch), 60, 0.005)
        done += len(batch)
        sampler.tick(f"{done}")
    print(f"cycles: {done} ({width} paths at a time)", flush=True)
    return sampler.finish(args.tolerance, args.period)


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def run(args, base):
    nodes = make_fleet(args, base)
    try:
        start_fleet(args, nodes)
        ok = run_cycles(args, nodes) if args.cycles else run_churn(args, nodes)
        return 0 if ok else 1
    finally:
        for n in nodes:
            n.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fleetsync", required=True, help="the fleetsync binary")
    p.add_argument("--duration", type=duration, default=duration("30m"), help="churn time (90s, 2m, 30m; default 30m)")
    p.add_argument("--rate", type=float, default=20.0, help="operations per second over the fleet (default 20)")
    p.add_argument("--every", type=duration, default=60.0, help="seconds between samples (default 60)")
    p.add_argument("--seed", type=int, default=1, help="churn seed (default 1)")
    p.add_argument("--files", type=int, default=400, help="files at most per node's working set (default 400)")
    p.add_argument("--max-size", type=int, default=64 << 10, help="largest file in bytes (default 64 KiB)")
    p.add_argument("--warmup", type=duration, default=duration("5m"),
                   help="the verdict compares the end with the first sample at or after this (default 5m)")
    p.add_argument("--cycles", type=int, default=0,
                   help="instead of churn: write, sync, delete files this many times (index and memory must stay flat)")
    p.add_argument("--cycle-paths", type=int, default=1,
                   help="with --cycles: paths cycled at once, each write+delete one cycle (default 1; keep under 100, the mass-delete guard's minimum folder)")
    p.add_argument("--tolerance", type=float, default=10.0, help="RSS growth allowed after warm-up, %% (default 10)")
    p.add_argument("--period", type=duration, default=duration("10m"),
                   help="compare the peak and trough RSS of each window this long after warm-up, first with last "
                        "(default 10m: the blob collector's period; 0 turns it off)")
    p.add_argument("--folder-key", action="append", default=[],
                   help='extra key for the folder, repeatable, e.g. --folder-key \'tombstone_ttl = "2m"\'')
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) after the run")
    args = p.parse_args()
    base = tempfile.mkdtemp(prefix="fleetsync-soak-")
    print(f"soak: 3 nodes in {base}, {args.duration:g}s at {args.rate:g} ops/s, seed {args.seed}", flush=True)
    try:
        code = run(args, base)
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
