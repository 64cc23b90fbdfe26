"""Helpers of the cluster integration tests (SPEC section 5; Python 3 standard library only).

* NatsServer: a real `nats-server` on 127.0.0.1 and a free port (found on PATH, /usr/sbin or
  /usr/bin), started and stopped by the test; can be stopped and started again on its port.
* NatsSubscriber: a minimal NATS client speaking the text protocol over a socket (CONNECT,
  SUB, MSG, PING/PONG): records every message on the subscribed subjects (skyring:events,
  skyring:node), reconnects on its own (bounded) when the server restarts.
* xxh3_64(): XXH3-64 with a seed (libxxhash through ctypes when present, else a pure Python
  implementation for inputs up to 240 bytes), and Ring: the node's consistent-hash ring rebuilt
  from GET /cluster, so a test knows which node owns an id and can pick a non-owner. The ring's
  points are checked against the Python hash before it is trusted (Ring.verified).
* ClusterNode: a harness.Node started with --nats/--cluster/--node-id on a fixed port chosen by
  the test (--port P --advertise 127.0.0.1:P), so a restart keeps its address.
* Cluster: a nats-server plus N nodes; start, join, leave (SIGTERM), kill -9, restart; waits
  for membership to converge (every node lists the same members and ring fingerprint) and for
  moves to settle (/health cluster.settled); sums metrics over the nodes.
* Ledger and check_exactly_once(): what the client knows about each create (acknowledged,
  refused, no answer) and the delivery check used by every test: every acknowledged timer
  delivered exactly once (repeats only under the crash exception), none early, nothing
  delivered that was refused.

Every loop is bounded in count and time; all waits poll with deadlines.
"""

import collections
import ctypes
import ctypes.util
import json
import os
import random
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import threading
import time
import unittest

from harness import (START_TIMEOUT, STOP_TIMEOUT, Client, Node, SkyringTestCase, free_port,
                     now_ms, timer_body, wait_until)

EVENTS_SUBJECT = "skyring:events"
NODE_SUBJECT = "skyring:node"

# Fast membership for tests: a crashed member is dropped after 2 s of silence.
HEARTBEAT = "200ms"
MEMBER_TIMEOUT = "2s"

# Generous: a loaded 2-core machine running 3-4 nodes, a nats-server and the test itself.
CONVERGE_TIMEOUT = 30.0
SETTLE_TIMEOUT = 90.0


# --------------------------------------------------------------------------------------
# nats-server


def nats_server_bin():
    b = os.environ.get("NATS_SERVER_BIN")
    if b:
        return b
    b = shutil.which("nats-server")
    if b:
        return b
    for cand in ("/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"):
        if os.path.exists(cand) and os.access(cand, os.X_OK):
            return cand
    raise AssertionError("nats-server not found on PATH, /usr/sbin or /usr/bin "
                         "(scripts/setup installs the Debian package nats-server)")


class NatsServer:
    """`nats-server -a 127.0.0.1 -p PORT`; its output kept for failure messages."""

    def __init__(self, port=None, start=True):
        self.bin = nats_server_bin()
        self.port = port or free_port()
        self.proc = None
        self.lines = []
        self._lock = threading.Lock()
        self.runs = 0
        if start:
            self.start()

    @property
    def url(self):
        return "nats://127.0.0.1:%d" % self.port

    def start(self, timeout=20.0):
        assert self.proc is None, "nats-server already running"
        self.runs += 1
        cmd = [self.bin, "-a", "127.0.0.1", "-p", str(self.port)]
        with self._lock:
            self.lines.append("---- start #%d: %s" % (self.runs, " ".join(cmd)))
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        self.proc = proc

        def drain():
            for raw in proc.stdout:
                with self._lock:
                    self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
            proc.stdout.close()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 10):
            if proc.poll() is not None:
                self.proc = None
                raise AssertionError("nats-server exited with %s:\n%s" % (proc.returncode, self.log()))
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                try:
                    s.settimeout(2)
                    if s.recv(4096).startswith(b"INFO"):
                        return self
                finally:
                    s.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError("nats-server not answering on port %d within %.0f s:\n%s"
                             % (self.port, timeout, self.log()))

    def stop(self, timeout=15.0):
        if self.proc is None:
            return
        proc = self.proc
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        self.proc = None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self, last=60):
        with self._lock:
            return "\n".join("  | " + l for l in self.lines[-last:])


# --------------------------------------------------------------------------------------
# NATS client (text protocol)


class NatsMessage:
    def __init__(self, subject, payload, t):
        self.subject = subject
        self.payload = payload  # bytes
        self.time = t  # time.time() at arrival
        try:
            self.json = json.loads(payload.decode("utf-8"))
        except ValueError:
            self.json = None

    def get(self, key, default=None):
        return self.json.get(key, default) if isinstance(self.json, dict) else default

    @property
    def type(self):
        return self.get("type")

    @property
    def node(self):
        return self.get("node")

    @property
    def timer(self):
        """The timer id of a timer event ("timer" is the id, or an object with an "id")."""
        t = self.get("timer")
        if isinstance(t, dict):
            return t.get("id")
        return t

    def __repr__(self):
        return "<NatsMessage %s %r>" % (self.subject, self.payload[:200])


class NatsSubscriber:
    """Subscribes to `subjects` on 127.0.0.1:port and records every message. One reader thread;
    when the connection drops it reconnects (every 0.2 s, until close()) and subscribes again.
    """

    MAX_PAYLOAD = 8 << 20

    def __init__(self, port, subjects=(EVENTS_SUBJECT, NODE_SUBJECT), connect_timeout=10.0):
        self.port = port
        self.subjects = list(subjects)
        self.messages = []
        self.cond = threading.Condition()
        self.closing = threading.Event()
        self.connected = threading.Event()
        self.connects = 0
        self.errors = []
        self._sock = None
        self._send_lock = threading.Lock()
        self._pongs = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.flush(connect_timeout)

    # ---- public
    def close(self):
        self.closing.set()
        s = self._sock
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(10)

    def all(self, subject=None):
        with self.cond:
            return [m for m in self.messages if subject is None or m.subject == subject]

    def flush(self, timeout=10.0):
        """PING and wait for its PONG: every SUB sent before is active on the server."""
        deadline = time.monotonic() + timeout
        if not self.connected.wait(timeout):
            raise AssertionError("NATS subscriber: not connected to port %d within %.0f s (%r)"
                                 % (self.port, timeout, self.errors[-3:]))
        with self.cond:
            want = self._pongs + 1
        self._send(b"PING\r\n")
        with self.cond:
            for _ in range(10000):
                if self._pongs >= want:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.2))
        raise AssertionError("NATS subscriber: no PONG within %.0f s" % timeout)

    def publish(self, subject, payload):
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        self._send(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))

    def wait_for(self, pred, count=1, timeout=15.0, msg=None):
        """Waits until at least `count` messages satisfy pred; returns them."""
        deadline = time.monotonic() + timeout
        got = []
        with self.cond:
            for _ in range(100000):
                got = [m for m in self.messages if pred(m)]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.5))
        raise AssertionError("%s: %d of %d NATS messages after %.1f s; last messages: %r"
                             % (msg or "NATS wait", len(got), count, timeout,
                                self.all()[-15:]))

    def timer_events(self, timer_id, type_=None):
        return [m for m in self.all(EVENTS_SUBJECT)
                if m.timer == timer_id and (type_ is None or m.type == type_)]

    # ---- internals
    def _send(self, data):
        with self._send_lock:
            s = self._sock
            if s is None:
                raise OSError("NATS subscriber not connected")
            s.sendall(data)

    def _run(self):
        for _ in range(1_000_000):
            if self.closing.is_set():
                return
            try:
                self._session()
            except OSError as e:
                self.errors.append(repr(e))
            self.connected.clear()
            with self._send_lock:
                if self._sock is not None:
                    try:
                        self._sock.close()
                    except OSError:
                        pass
                    self._sock = None
            self.closing.wait(0.2)

    def _session(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.settimeout(1.0)
        buf = b""
        # INFO first
        deadline = time.monotonic() + 10
        while b"\r\n" not in buf:
            if self.closing.is_set() or time.monotonic() > deadline:
                s.close()
                return
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                s.close()
                return
            buf += chunk
        line, _, buf = buf.partition(b"\r\n")
        if not line.startswith(b"INFO"):
            s.close()
            raise OSError("NATS: expected INFO, got %r" % line[:100])
        with self._send_lock:
            self._sock = s
        hello = b'CONNECT {"verbose":false,"pedantic":false,"name":"skyring-it","lang":"python",' \
                b'"version":"0.1","protocol":1}\r\n'
        subs = b"".join(b"SUB %s %d\r\n" % (subj.encode(), i + 1)
                        for i, subj in enumerate(self.subjects))
        self._send(hello + subs)
        self.connects += 1
        self.connected.set()
        for _ in range(100_000_000):
            # Parse whatever is buffered.
            progressed = True
            while progressed:
                progressed = False
                if b"\r\n" not in buf:
                    break
                line, _, rest = buf.partition(b"\r\n")
                if line.startswith(b"MSG "):
                    parts = line.split()
                    # MSG <subject> <sid> [reply-to] <#bytes>
                    n = int(parts[-1])
                    if n > self.MAX_PAYLOAD:
                        raise OSError("NATS: payload too large")
                    if len(rest) < n + 2:
                        break  # need more
                    payload = rest[:n]
                    buf = rest[n + 2:]
                    m = NatsMessage(parts[1].decode("utf-8", "replace"), payload, time.time())
                    with self.cond:
                        self.messages.append(m)
                        self.cond.notify_all()
                    progressed = True
                    continue
                buf = rest
                progressed = True
                if line == b"PING":
                    self._send(b"PONG\r\n")
                elif line == b"PONG":
                    with self.cond:
                        self._pongs += 1
                        self.cond.notify_all()
                elif line.startswith(b"-ERR"):
                    self.errors.append(line.decode("utf-8", "replace"))
                # +OK, INFO (cluster updates): ignored
            if self.closing.is_set():
                return
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise OSError("NATS: connection closed by the server")
            buf += chunk


# --------------------------------------------------------------------------------------
# XXH3-64 and the ring

_M64 = (1 << 64) - 1
_P32_1, _P32_2, _P32_3 = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D
_P64_1, _P64_2, _P64_3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
_PMX1, _PMX2 = 0x165667919E3779F9, 0x9FB21C651E98DF25
_SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e")


def _r32(b, i):
    return int.from_bytes(b[i:i + 4], "little")


def _r64(b, i):
    return int.from_bytes(b[i:i + 8], "little")


def _rotl64(x, r):
    return ((x << r) | (x >> (64 - r))) & _M64


def _swap32(x):
    return int.from_bytes((x & 0xFFFFFFFF).to_bytes(4, "little"), "big")


def _swap64(x):
    return int.from_bytes(x.to_bytes(8, "little"), "big")


def _xxh64_avalanche(h):
    h ^= h >> 33
    h = (h * _P64_2) & _M64
    h ^= h >> 29
    h = (h * _P64_3) & _M64
    return h ^ (h >> 32)


def _xxh3_avalanche(h):
    h ^= h >> 37
    h = (h * _PMX1) & _M64
    return h ^ (h >> 32)


def _rrmxmx(h, n):
    h ^= _rotl64(h, 49) ^ _rotl64(h, 24)
    h = (h * _PMX2) & _M64
    h ^= (h >> 35) + n
    h = (h * _PMX2) & _M64
    return h ^ (h >> 28)


def _mul128_fold64(a, b):
    p = a * b
    return (p ^ (p >> 64)) & _M64


def _mix16(data, i, s, seed):
    lo = _r64(data, i)
    hi = _r64(data, i + 8)
    return _mul128_fold64(lo ^ ((_r64(_SECRET, s) + seed) & _M64),
                          hi ^ ((_r64(_SECRET, s + 8) - seed) & _M64))


def xxh3_64_py(data, seed=0):
    """XXH3_64bits_withSeed for inputs of 0..240 bytes (pure Python)."""
    n = len(data)
    seed &= _M64
    if n == 0:
        return _xxh64_avalanche(seed ^ _r64(_SECRET, 56) ^ _r64(_SECRET, 64))
    if n <= 3:
        c1, c2, c3 = data[0], data[n >> 1], data[n - 1]
        combined = (c1 << 16) | (c2 << 24) | c3 | (n << 8)
        bitflip = ((_r32(_SECRET, 0) ^ _r32(_SECRET, 4)) + seed) & _M64
        return _xxh64_avalanche(combined ^ bitflip)
    if n <= 8:
        seed ^= _swap32(seed & 0xFFFFFFFF) << 32
        in1 = _r32(data, 0)
        in2 = _r32(data, n - 4)
        bitflip = ((_r64(_SECRET, 8) ^ _r64(_SECRET, 16)) - seed) & _M64
        in64 = (in2 + (in1 << 32)) & _M64
        return _rrmxmx(in64 ^ bitflip, n)
    if n <= 16:
        bf1 = ((_r64(_SECRET, 24) ^ _r64(_SECRET, 32)) + seed) & _M64
        bf2 = ((_r64(_SECRET, 40) ^ _r64(_SECRET, 48)) - seed) & _M64
        lo = _r64(data, 0) ^ bf1
        hi = _r64(data, n - 8) ^ bf2
        acc = (n + _swap64(lo) + hi + _mul128_fold64(lo, hi)) & _M64
        return _xxh3_avalanche(acc)
    if n <= 128:
        acc = (n * _P64_1) & _M64
        if n > 32:
            if n > 64:
                if n > 96:
                    acc += _mix16(data, 48, 96, seed)
                    acc += _mix16(data, n - 64, 112, seed)
                acc += _mix16(data, 32, 64, seed)
                acc += _mix16(data, n - 48, 80, seed)
            acc += _mix16(data, 16, 32, seed)
            acc += _mix16(data, n - 32, 48, seed)
        acc += _mix16(data, 0, 0, seed)
        acc += _mix16(data, n - 16, 16, seed)
        return _xxh3_avalanche(acc & _M64)
    if n <= 240:
        acc = (n * _P64_1) & _M64
        rounds = n // 16
        for i in range(8):
            acc += _mix16(data, 16 * i, 16 * i, seed)
        acc = _xxh3_avalanche(acc & _M64)
        for i in range(8, rounds):
            acc += _mix16(data, 16 * i, 16 * (i - 8) + 3, seed)
        acc += _mix16(data, n - 16, 136 - 17, seed)
        return _xxh3_avalanche(acc & _M64)
    raise ValueError("xxh3_64_py: inputs over 240 bytes are not implemented")


def _load_libxxhash():
    for name in ("libxxhash.so.0", ctypes.util.find_library("xxhash")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            f = lib.XXH3_64bits_withSeed
            f.restype = ctypes.c_uint64
            f.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64]
            return f
        except (OSError, AttributeError):
            continue
    return None


_XXH3_C = _load_libxxhash()


def xxh3_64(data, seed=0):
    if isinstance(data, str):
        data = data.encode("utf-8")
    if _XXH3_C is not None:
        return int(_XXH3_C(data, len(data), seed & _M64))
    return xxh3_64_py(data, seed)


class Ring:
    """The ring of GET /cluster: points (hash, member id) sorted by (hash, member id); the owner
    of an id is the member of the first point at or after XXH3-64(id, seed), wrapping around.
    `verified`: every point's hash equals XXH3-64("<member>#<i>", seed) as computed here."""

    def __init__(self, info):
        self.info = info
        self.seed = int(info.get("seed", 0))
        self.vnodes = int(info.get("vnodes", 0))
        self.members = sorted(m["id"] for m in info.get("members", [])
                              if m.get("state", "active") == "active")
        pts = [(int(h), m) for h, m in info.get("points", [])]
        pts.sort()
        self.points = pts
        self.hashes = [h for h, _ in pts]
        self.verified = self._verify()

    def _verify(self):
        if not self.points or self.info.get("hash") not in ("xxh3-64", "xxh3_64", "XXH3-64"):
            return False
        by_member = collections.defaultdict(set)
        for h, m in self.points:
            by_member[m].add(h)
        for m, hs in by_member.items():
            want = {xxh3_64("%s#%d" % (m, i), self.seed) for i in range(self.vnodes)}
            if want != hs:
                return False
        return True

    def owner(self, timer_id, members=None):
        """Owner of timer_id in this ring, or in the ring of a subset of its members."""
        import bisect
        pts = self.points if members is None else [p for p in self.points if p[1] in members]
        hashes = self.hashes if members is None else [h for h, _ in pts]
        if not pts:
            return None
        h = xxh3_64(timer_id, self.seed)
        i = bisect.bisect_left(hashes, h)
        return pts[i % len(pts)][1]

    def owner_of_members(self, timer_id, members):
        """Owner in the ring a node would build from `members` (ids) with the same parameters:
        points of a member do not depend on the others."""
        import bisect
        pts = sorted((xxh3_64("%s#%d" % (m, i), self.seed), m)
                     for m in members for i in range(self.vnodes))
        h = xxh3_64(timer_id, self.seed)
        i = bisect.bisect_left([p[0] for p in pts], h)
        return pts[i % len(pts)][1]


def random_id(prefix="", n=12, rnd=random):
    return prefix + "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(n))


# --------------------------------------------------------------------------------------
# Cluster nodes


class ClusterNode(Node):
    """A clustered `skyring run`: fixed --port P and --advertise 127.0.0.1:P (kept across
    restarts), --nats, --cluster, --node-id, fast membership timing."""

    def __init__(self, nats_url, node_id, cluster="skyring-it", port=None, data_dir=None,
                 heartbeat=HEARTBEAT, member_timeout=MEMBER_TIMEOUT, extra_args=(), start=True,
                 **kw):
        self.node_id = node_id
        self.cluster_name = cluster
        self.nats_url = nats_url
        self.fixed_port = port or free_port()
        args = ["--nats", nats_url, "--cluster", cluster, "--node-id", node_id,
                "--advertise", "127.0.0.1:%d" % self.fixed_port,
                "--heartbeat-interval", heartbeat, "--member-timeout", member_timeout]
        args += list(extra_args)
        super().__init__(args=args, data_dir=data_dir, port=self.fixed_port, start=False, **kw)
        if start:
            self.start()

    def start(self, timeout=START_TIMEOUT):
        # A port freed by a killed node may be taken by someone else meanwhile: then the
        # restart fails with a clear "port in use" error, which the test reports.
        super().start(timeout)
        assert self.port == self.fixed_port, (self.port, self.fixed_port)
        return self

    def __repr__(self):
        return "<ClusterNode %s :%d %s>" % (self.node_id, self.fixed_port,
                                            "running" if self.running() else "stopped")


class Cluster:
    """A nats-server and clustered nodes node-1..node-N (ids and ports fixed for the life of the
    Cluster). close() kills everything and removes the data dirs."""

    def __init__(self, size=3, name=None, heartbeat=HEARTBEAT, member_timeout=MEMBER_TIMEOUT,
                 extra_args=(), wait=True):
        self.name = name or "it-%d-%d" % (os.getpid(), random.randrange(1 << 30))
        self.heartbeat = heartbeat
        self.member_timeout = member_timeout
        self.extra_args = list(extra_args)
        self.tmp = tempfile.mkdtemp(prefix="skyring-cluster-it-")
        self.nats = None
        self.nodes = collections.OrderedDict()  # id -> ClusterNode
        self.subscribers = []
        self.formed_in = None  # seconds from the first node's start to one converged ring
        try:
            self.nats = NatsServer()
            t0 = time.monotonic()
            for _ in range(size):
                self.add_node(wait=False)
            if wait and size:
                self.wait_converged()
                self.formed_in = time.monotonic() - t0
        except BaseException:
            self.close()
            raise

    # ---- membership of the test's cluster
    def add_node(self, node_id=None, wait=False, start=True):
        node_id = node_id or "node-%d" % (len(self.nodes) + 1)
        d = os.path.join(self.tmp, node_id)
        os.makedirs(d, exist_ok=True)
        n = ClusterNode(self.nats.url, node_id, cluster=self.name, data_dir=d,
                        heartbeat=self.heartbeat, member_timeout=self.member_timeout,
                        extra_args=self.extra_args, start=False)
        self.nodes[node_id] = n
        if start:
            n.start()
            if wait:
                self.wait_converged()
        return n

    def node(self, node_id):
        return self.nodes[node_id]

    def running(self):
        return [n for n in self.nodes.values() if n.running()]

    def running_ids(self):
        return sorted(n.node_id for n in self.running())

    def subscribe(self, subjects=(EVENTS_SUBJECT, NODE_SUBJECT)):
        s = NatsSubscriber(self.nats.port, subjects)
        self.subscribers.append(s)
        return s

    # ---- reading the nodes
    @staticmethod
    def get_json(node, path, timeout=10.0):
        c = Client(node.port, timeout=timeout)
        try:
            r = c.get(path)
            if r.status != 200:
                return None
            return r.json()
        except (OSError, ValueError):
            return None
        finally:
            c.close()

    def info(self, node):
        return self.get_json(node, "/cluster")

    def health(self, node):
        c = Client(node.port, timeout=10)
        try:
            r = c.get("/health")
            return r.json()
        except (OSError, ValueError):
            return None
        finally:
            c.close()

    def metrics(self, node):
        c = Client(node.port, timeout=10)
        try:
            return c.metrics()
        except (OSError, AssertionError, ValueError):
            return {}
        finally:
            c.close()

    def metric(self, node, name, default=0.0):
        return self.metrics(node).get(name, default)

    def metric_sum(self, name, nodes=None):
        return sum(self.metric(n, name) for n in (nodes or self.running()))

    def ring(self, node=None):
        node = node or self.running()[0]
        info = self.info(node)
        assert info is not None, "GET /cluster failed on %s" % node.node_id
        return Ring(info)

    def converged(self, expect_ids=None):
        """Every running node lists exactly expect_ids (default: the running nodes) as active
        members, with one ring fingerprint. Returns the fingerprint, or False."""
        want = sorted(expect_ids or self.running_ids())
        fps = set()
        for n in self.running():
            info = self.info(n)
            if info is None:
                return False
            ids = sorted(m["id"] for m in info.get("members", [])
                         if m.get("state", "active") == "active")
            if ids != want:
                return False
            # A node still joining (members' answers arriving) answers 503 for ids it does not
            # hold: the view counts only once it knows the ring.
            h = self.health(n) or {}
            if (h.get("cluster") or {}).get("state") == "joining":
                return False
            fps.add(str(info.get("ring_fingerprint")))
        return fps.pop() if len(fps) == 1 else False

    def wait_converged(self, expect_ids=None, timeout=CONVERGE_TIMEOUT):
        def describe():
            out = {}
            for n in self.running():
                info = self.info(n) or {}
                out[n.node_id] = ([(m.get("id"), m.get("state")) for m in info.get("members", [])],
                                  info.get("ring_fingerprint"))
            return out
        try:
            return wait_until(lambda: self.converged(expect_ids), timeout, interval=0.1,
                              msg="cluster membership converged on %r"
                                  % (expect_ids or self.running_ids()))
        except AssertionError as e:
            raise AssertionError("%s; members seen: %r" % (e, describe())) from None

    def settled(self, nodes=None):
        for n in nodes or self.running():
            h = self.health(n)
            if not h or not (h.get("cluster") or {}).get("settled"):
                return False
        return True

    def wait_settled(self, timeout=SETTLE_TIMEOUT, nodes=None):
        return wait_until(lambda: self.settled(nodes), timeout, interval=0.1,
                          msg="every node reports cluster.settled in /health (%r)"
                              % {n.node_id: (self.health(n) or {}).get("cluster")
                                 for n in self.running()})

    # ---- teardown
    def log(self):
        out = []
        for n in self.nodes.values():
            out.append("==== %s (port %d, %s) ====\n%s" % (n.node_id, n.fixed_port, n.data_dir,
                                                          n.log(300)))
        if self.nats is not None:
            out.append("==== nats-server (port %d) ====\n%s" % (self.nats.port, self.nats.log()))
        return "\n".join(out)

    def close(self):
        for s in self.subscribers:
            try:
                s.close()
            except Exception:  # noqa: BLE001 - cleanup
                pass
        self.subscribers = []
        for n in self.nodes.values():
            try:
                n.kill()
            except Exception:  # noqa: BLE001 - cleanup
                pass
        if self.nats is not None:
            self.nats.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


class ClusterTestCase(SkyringTestCase):
    """start_cluster() is cleaned up automatically; on a failure every node's and the
    nats-server's output is printed."""

    def setUp(self):
        super().setUp()
        self._clusters = []

    def start_cluster(self, *args, **kw):
        c = Cluster(*args, **kw)
        self._clusters.append(c)
        self.addCleanup(c.close)
        return c

    def run(self, result=None):
        before_f = len(result.failures) if result else 0
        before_e = len(result.errors) if result else 0
        res = unittest.TestCase.run(self, result)
        result = result or res
        if result is not None and (len(result.failures) > before_f or len(result.errors) > before_e):
            for c in list(getattr(self, "_clusters", [])) + list(
                    getattr(type(self), "shared_clusters", [])):
                print("\n" + c.log())
        return res


# --------------------------------------------------------------------------------------
# Client-side ledger and the delivery check


class Ledger:
    """What the clients know. acked: 201 received (must be delivered exactly once); refused: a
    4xx (must never be delivered); unknown: no answer or a 5xx (may exist: at most once)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}
        self.refused = {}
        self.unknown = {}
        self.statuses = collections.Counter()
        self.via = {}  # id -> node id the create was sent to

    def record(self, tid, due_ms, status, via=None):
        with self.lock:
            self.statuses[status] += 1
            if via is not None:
                self.via[tid] = via
            if status == 201:
                self.acked[tid] = due_ms
                self.unknown.pop(tid, None)
            elif status is None or status >= 500:
                self.unknown[tid] = due_ms
            else:
                self.refused[tid] = due_ms

    def summary(self):
        with self.lock:
            return "%d acked, %d refused, %d unanswered/5xx, statuses %r" % (
                len(self.acked), len(self.refused), len(self.unknown), dict(self.statuses))


def create_one(client, ledger, rec_url, tid, at, via=None, retry=None, data=None):
    body = timer_body(rec_url, at=at, data=data if data is not None else {"id": tid, "at": at},
                      retry=retry or {"attempts": 20, "backoff_ms": 100, "max_backoff_ms": 1000})
    try:
        r = client.create(body, timer_id=tid)
    except Exception:  # noqa: BLE001 - no answer (connection error, timeout)
        client.close()
        ledger.record(tid, at, None, via)
        return None
    ledger.record(tid, at, r.status, via)
    return r


def check_exactly_once(tc, rec, path, ledger, allowed_repeats=(), timeout=60.0, settle=2.0,
                       late_margin_ms=None):
    """Waits (bounded) until every acknowledged timer arrived at `path`, waits `settle` seconds
    for repeats, then asserts: none early (arrival < due), none missing, nothing refused or
    unknown delivered (refused: never; unknown: at most once), no id twice except ids in
    allowed_repeats (the crash exception: at most twice). Optionally none later than
    due + late_margin_ms. Returns the Counter of deliveries per id."""
    acked = dict(ledger.acked)

    def missing():
        got = {r.timer_id for r in rec.for_path(path)}
        return sorted(set(acked) - got)

    try:
        wait_until(lambda: not missing(), timeout, interval=0.2,
                   msg="every acknowledged timer delivered")
    except AssertionError:
        m = missing()
        tc.fail("%d of %d acknowledged timers not delivered within %.0f s (first: %r; %s)"
                % (len(m), len(acked), timeout, m[:10], ledger.summary()))
    time.sleep(settle)  # let a duplicate show up: absence can only be checked after a wait
    got = rec.for_path(path)
    counts = collections.Counter(r.timer_id for r in got)
    known = dict(ledger.unknown)
    known.update(ledger.refused)
    known.update(acked)
    early = [(r.timer_id, round(known[r.timer_id] - r.time * 1000, 1), r.attempt) for r in got
             if r.timer_id in known and r.time * 1000 < known[r.timer_id]]
    tc.assertEqual(early, [], "delivered before the due time (id, ms early, attempt)")
    strangers = sorted(set(counts) - set(known))
    tc.assertEqual(strangers[:20], [], "deliveries of ids never created")
    refused = sorted(set(counts) & set(ledger.refused))
    tc.assertEqual(refused[:20], [], "delivered although the create was refused (4xx)")
    allowed = set(allowed_repeats)
    dups = {t: n for t, n in counts.items() if n > 1 and (t not in allowed or n > 2)}
    if dups:
        detail = {t: [(r.attempt, round(r.time * 1000 - known.get(t, 0), 1)) for r in got
                      if r.timer_id == t] for t in sorted(dups)[:10]}
        tc.fail("%d timers delivered more than once (first 10: id -> [(attempt, ms after due)]): "
                "%r" % (len(dups), detail))
    if late_margin_ms is not None:
        first = {}
        for r in got:
            first.setdefault(r.timer_id, r.time * 1000)
        late = sorted((round(first[t] - d), t) for t, d in acked.items()
                      if t in first and first[t] > d + late_margin_ms)
        tc.assertEqual(late[:20], [], "delivered later than due + %d ms (ms late, id)"
                       % late_margin_ms)
    return counts


class Loader:
    """Client threads creating timers through the given nodes until stop() or `max_per_thread`
    each: ids "<prefix><thread>-<seq>", due `due_ms(seq)` (epoch ms) computed at send time. A
    node that is gone (connection refused) only marks the create unknown; the thread goes on."""

    def __init__(self, nodes, rec_url, ledger, prefix, due_offset_ms=(1000, 8000),
                 threads_per_node=1, max_per_thread=100000, pause=0.0, timeout=15.0,
                 rnd_seed=1):
        self.nodes = list(nodes)
        self.rec_url = rec_url
        self.ledger = ledger
        self.prefix = prefix
        self.lo, self.hi = due_offset_ms
        self.max = max_per_thread
        self.pause = pause
        self.timeout = timeout
        self.stopping = threading.Event()
        self.sent = 0
        self.threads = []
        self.paused_nodes = set()  # node ids no longer targeted
        self._lock = threading.Lock()
        k = 0
        for n in self.nodes:
            for _ in range(threads_per_node):
                t = threading.Thread(target=self._run, args=(n, k, rnd_seed * 1000 + k),
                                     daemon=True)
                self.threads.append(t)
                k += 1

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def avoid(self, node_id):
        """Stop sending through node_id (before it is stopped)."""
        with self._lock:
            self.paused_nodes.add(node_id)

    def _run(self, node, k, seed):
        rnd = random.Random(seed)
        c = Client(node.fixed_port, timeout=self.timeout)
        try:
            for seq in range(self.max):
                if self.stopping.is_set():
                    return
                with self._lock:
                    avoid = node.node_id in self.paused_nodes
                if avoid:
                    self.stopping.wait(0.05)
                    continue
                tid = "%s%d-%d-%s" % (self.prefix, k, seq, random_id(n=4, rnd=rnd))
                at = now_ms() + rnd.randint(self.lo, self.hi)
                create_one(c, self.ledger, self.rec_url, tid, at, via=node.node_id)
                with self._lock:
                    self.sent += 1
                if self.pause:
                    self.stopping.wait(self.pause)
        finally:
            c.close()

    def join(self, timeout):
        """Waits (bounded) until every thread sent its max_per_thread creates."""
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def stop(self, timeout=60.0):
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)


def create_many(nodes, rec_url, ledger, plan, threads_per_node=2, timeout=30.0, retry=None):
    """Creates plan [(id, at_ms)] spread round-robin over nodes, threads_per_node clients each;
    returns when all were sent (bounded by the client timeout per request)."""
    nodes = list(nodes)
    workers = []
    nthreads = len(nodes) * threads_per_node
    for k in range(nthreads):
        node = nodes[k % len(nodes)]
        chunk = plan[k::nthreads]

        def work(node=node, chunk=chunk):
            c = Client(node.fixed_port, timeout=timeout)
            try:
                for tid, at in chunk:
                    create_one(c, ledger, rec_url, tid, at, via=node.node_id, retry=retry)
            finally:
                c.close()

        workers.append(threading.Thread(target=work, daemon=True))
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout * (len(plan) // max(nthreads, 1) + 2))
    assert not any(t.is_alive() for t in workers), "create_many: clients still running"
