"""Shared helpers of the Skyring integration tests (Python 3 standard library only).

* Node: runs the real `skyring` binary on 127.0.0.1 with port 0 and a temp data dir, parses
  the `listening on HOST:PORT` line from stderr (with a deadline), drains stderr in a thread
  (kept for failure messages), stops it (SIGTERM/SIGINT, asserts exit 0), kills it (-9) and
  restarts it on the same data dir.
* Client: a tiny keep-alive HTTP/1.1 client over http.client.
* Receiver: a real webhook receiver (ThreadingHTTPServer on 127.0.0.1:0, HTTP/1.1
  keep-alive) that records every request and answers per path: a status sequence, a delay,
  a gate the test releases, or never.
* wait_until(): polling with a deadline; every loop in the tests is bounded in time and count.

The binary is taken from $SKYRING_BIN (ctest sets it), else the usual build directories.
Timing assertions are one-sided ("not before the due time", "within a generous deadline"):
the machine is a loaded 2-core box.
"""

import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Generous deadlines: a loaded 2-core machine, a RelWithDebInfo (maybe sanitizer) build.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 15.0


def skyring_bin():
    b = os.environ.get("SKYRING_BIN")
    if b:
        return b
    for d in ("build-int", "build"):
        cand = os.path.join(REPO, d, "skyring")
        if os.path.exists(cand):
            return cand
    raise unittest.SkipTest("SKYRING_BIN is not set and no built skyring binary was found")


def wait_until(pred, timeout=DELIVERY_TIMEOUT, interval=0.02, msg=None):
    """Polls pred() until it returns a truthy value (returned) or the deadline passes
    (AssertionError). Bounded in time and in number of polls."""
    deadline = time.monotonic() + timeout
    max_polls = int(timeout / max(interval, 0.001)) + 10
    last = None
    for _ in range(max_polls):
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AssertionError("%s (not true after %.1f s; last value %r)"
                         % (msg or "condition", timeout, last))


def now_ms():
    return int(time.time() * 1000)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# --------------------------------------------------------------------------------------
# HTTP client


class Response:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers  # dict, lower-case names
        self.body = body

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return "<Response %d %r %r>" % (self.status, self.headers, self.body[:300])


class Client:
    """Keep-alive HTTP/1.1 client of one node. Reconnects once when a reused connection was
    closed by the server before it answered (idle timeout)."""

    def __init__(self, port, host="127.0.0.1", timeout=30.0):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.conn = None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method, path, body=None, headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode("utf-8")
        hdrs = dict(headers or {})
        if body is not None and not any(k.lower() == "content-type" for k in hdrs):
            hdrs["Content-Type"] = "application/json"
        for attempt in range(2):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=hdrs)
                r = self.conn.getresponse()
                data = r.read()
                resp = Response(r.status, r.reason,
                                {k.lower(): v for k, v in r.getheaders()}, data)
                if r.will_close:
                    self.close()
                return resp
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                self.close()
                if attempt == 0 and reused:
                    continue
                raise
        raise AssertionError("unreachable")

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body=body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    # Timer helpers
    def create(self, body, timer_id=None):
        h = {"x-timer-id": timer_id} if timer_id is not None else None
        return self.post("/timer", body, headers=h)

    def timer(self, timer_id):
        r = self.get("/timer/" + timer_id)
        return r.json() if r.status == 200 else None

    def state(self, timer_id):
        t = self.timer(timer_id)
        return t["state"] if t else None

    def metrics(self):
        """Parses /metrics into {name_with_labels: float}."""
        r = self.get("/metrics")
        assert r.status == 200, r
        out = {}
        for line in r.text.splitlines():
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(" ", 1)
            if len(parts) == 2:
                try:
                    out[parts[0]] = float(parts[1])
                except ValueError:
                    pass
        return out


def timer_body(uri, timeout=None, at=None, data=None, method="post", headers=None, retry=None,
               transport="http", **extra):
    b = {}
    if timeout is not None:
        b["timeout"] = timeout
    if at is not None:
        b["at"] = at
    if data is not None:
        b["data"] = data
    cb = {"transport": transport, "method": method, "uri": uri}
    if headers is not None:
        cb["headers"] = headers
    b["callback"] = cb
    if retry is not None:
        b["retry"] = retry
    b.update(extra)
    return b


# --------------------------------------------------------------------------------------
# The node under test


class Node:
    """One `skyring run` process. Use as a context manager or call close() (tearDown)."""

    _LISTEN = re.compile(r"listening on ([0-9.]+|\[[0-9a-fA-F:]+\]):(\d+)")

    def __init__(self, args=(), env=None, data_dir=None, storage=None, host="127.0.0.1",
                 port=0, start=True, tmp_parent=None, raw_args=False, cwd=None, preexec_fn=None):
        self.bin = skyring_bin()
        self.extra_args = list(args)
        self.env_extra = dict(env or {})
        self.host = host
        self.port_arg = port
        self.storage = storage
        self.raw_args = raw_args  # True: run exactly `skyring run ARGS` (config tests)
        self.cwd = cwd
        self.preexec_fn = preexec_fn  # run in the child before exec (e.g. resource.setrlimit)
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="skyring-it-", dir=tmp_parent)
        self.proc = None
        self.port = None
        self.lines = []
        self._lines_lock = threading.Lock()
        self._drain = None
        self._clients = []
        self.runs = 0
        if start:
            self.start()

    # ---- process control
    def command(self):
        if self.raw_args:
            return [self.bin, "run"] + self.extra_args
        cmd = [self.bin, "run", "--host", self.host, "--port", str(self.port_arg),
               "--data-dir", self.data_dir]
        if self.storage:
            cmd += ["--storage", self.storage]
        return cmd + self.extra_args

    def _env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKYRING_")}
        env.update(self.env_extra)
        return env

    def start(self, timeout=START_TIMEOUT):
        assert self.proc is None, "node already running"
        self.runs += 1
        with self._lines_lock:
            self.lines.append("---- start #%d: %s" % (self.runs, " ".join(self.command())))
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=self._env(), cwd=self.cwd, preexec_fn=self.preexec_fn)
        listening = threading.Event()
        found = {}
        proc = self.proc

        def drain():
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self._lines_lock:
                    self.lines.append(line)
                if not listening.is_set():
                    m = self._LISTEN.search(line)
                    if m:
                        found["port"] = int(m.group(2))
                        listening.set()
            proc.stderr.close()

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()
        deadline = time.monotonic() + timeout
        while not listening.wait(0.05):
            if proc.poll() is not None:
                self._drain.join(5)
                self.proc = None
                raise AssertionError("skyring exited with %s before listening:\n%s"
                                     % (proc.returncode, self.log()))
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError("skyring did not log 'listening' within %.0f s:\n%s"
                                     % (timeout, self.log()))
        self.port = found["port"]
        return self

    def signal_stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Sends sig, waits for exit, returns the exit code (kills -9 after the deadline)."""
        assert self.proc is not None, "node not running"
        self._close_clients()
        proc = self.proc
        proc.send_signal(sig)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            self._finish()
            raise AssertionError("skyring did not exit within %.0f s after signal %d:\n%s"
                                 % (timeout, sig, self.log()))
        self._finish()
        return rc

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        rc = self.signal_stop(sig, timeout)
        assert rc == 0, "skyring exited with %s after signal %d:\n%s" % (rc, sig, self.log())

    def kill(self):
        """kill -9: no chance to flush or hand anything off."""
        if self.proc is None:
            return
        self._close_clients()
        self.proc.kill()
        self.proc.wait(10)
        self._finish()

    def restart(self, timeout=START_TIMEOUT):
        if self.proc is not None:
            self.stop()
        return self.start(timeout)

    def _finish(self):
        if self._drain is not None:
            self._drain.join(5)
        self.proc = None
        self.port = None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _close_clients(self):
        for c in self._clients:
            c.close()
        self._clients = []

    def close(self):
        """Test cleanup: kill whatever runs, remove the temp data dir."""
        try:
            if self.proc is not None:
                self.kill()
        finally:
            if self._own_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- introspection
    def log(self, last=200):
        with self._lines_lock:
            lines = list(self.lines[-last:])
        return "\n".join("  | " + l for l in lines)

    def client(self, timeout=30.0):
        assert self.port is not None, "node not running"
        c = Client(self.port, timeout=timeout)
        self._clients.append(c)
        return c

    def url(self, path=""):
        return "http://127.0.0.1:%d%s" % (self.port, path)


def run_binary(args, env=None, timeout=30.0, cwd=None):
    """Runs `skyring ARGS` to completion (config errors): returns (rc, stdout, stderr).
    A node that unexpectedly starts is stopped and reported as rc None."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("SKYRING_")}
    e.update(env or {})
    p = subprocess.Popen([skyring_bin()] + list(args), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, cwd=cwd)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate(timeout=10)
        return None, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


# --------------------------------------------------------------------------------------
# Webhook receiver


class Received:
    def __init__(self, method, path, headers, body, t):
        self.method = method
        self.path = path
        self.headers = headers  # dict, lower-case names (last value wins)
        self.raw_headers = None
        self.peer = None  # (host, port) of the connection it came on
        self.body = body
        self.time = t  # time.time() when the request was fully read

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    @property
    def timer_id(self):
        return self.headers.get("x-skyring-timer-id")

    @property
    def attempt(self):
        a = self.headers.get("x-skyring-attempt")
        return int(a) if a is not None else None

    def __repr__(self):
        return "<Received %s %s id=%s attempt=%s body=%r>" % (
            self.method, self.path, self.timer_id, self.attempt, self.body[:100])


class Behaviour:
    """How the receiver answers one path."""

    def __init__(self, statuses=(200,), delay=0.0, hang=False, gate=None, body=b"",
                 headers=None, close=False, raw=None):
        self.headers = dict(headers or {})
        self.close = close  # close the connection after answering (without saying so)
        self.raw = raw  # bytes written as the whole answer instead of a proper response
        self.statuses = list(statuses)
        self.delay = delay
        self.hang = hang  # never answer (until the receiver is closed), then drop the connection
        self.gate = gate  # threading.Event: hold the answer until it is set
        self.body = body
        self.count = 0
        self.lock = threading.Lock()

    def next_status(self):
        with self.lock:
            i = min(self.count, len(self.statuses) - 1)
            self.count += 1
            return self.statuses[i]


class Receiver:
    """Records every request; answers according to the Behaviour registered for its path
    (exact path with query first, then the path without query, else 200)."""

    MAX_WAIT = 120.0  # upper bound of any hang/gate, so handler threads always end

    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.behaviours = {}
        self.closing = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def handle_any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = self._read_chunked()
                rec = Received(self.command, self.path,
                               {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                rec.raw_headers = self.headers.items()
                rec.peer = self.client_address
                with receiver.cond:
                    receiver.requests.append(rec)
                    receiver.cond.notify_all()
                b = receiver._behaviour(self.path)
                if b.hang:
                    receiver.closing.wait(Receiver.MAX_WAIT)
                    self.close_connection = True
                    return
                if b.gate is not None:
                    b.gate.wait(Receiver.MAX_WAIT)
                if b.delay:
                    receiver.closing.wait(b.delay)
                if b.raw is not None:
                    self.wfile.write(b.raw)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                status = b.next_status()
                self.send_response(status)
                for k, v in b.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(b.body)))
                self.end_headers()
                if self.command != "HEAD" and b.body:
                    self.wfile.write(b.body)
                if b.close:
                    self.wfile.flush()
                    self.close_connection = True

            def _read_chunked(self):
                out = b""
                for _ in range(100000):
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    out += self.rfile.read(size)
                    self.rfile.readline()
                return out

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = handle_any

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

            def handle_error(self, request, client_address):
                # A node killed mid-request resets its connections: expected, not noise.
                import sys
                exc = sys.exc_info()[1]
                if isinstance(exc, (ConnectionError, TimeoutError)):
                    return
                super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    def url(self, path="/hook"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def on(self, path, **kw):
        """Registers the behaviour of a path (see Behaviour); returns it."""
        b = Behaviour(**kw)
        with self.lock:
            self.behaviours[path] = b
        return b

    def _behaviour(self, path):
        with self.lock:
            b = self.behaviours.get(path)
            if b is None:
                b = self.behaviours.get(path.split("?", 1)[0])
            if b is None:
                b = self.behaviours.setdefault(None, Behaviour())
            return b

    def all(self):
        with self.lock:
            return list(self.requests)

    def for_path(self, path):
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def for_timer(self, timer_id):
        with self.lock:
            return [r for r in self.requests if r.timer_id == timer_id]

    def wait_for(self, pred, count=1, timeout=DELIVERY_TIMEOUT, msg=None):
        """Waits until at least `count` recorded requests satisfy pred; returns them."""
        deadline = time.monotonic() + timeout
        with self.cond:
            for _ in range(100000):
                got = [r for r in self.requests if pred(r)]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.5))
        raise AssertionError("%s: %d of %d requests after %.1f s; received: %r"
                             % (msg or "receiver wait", len(got), count, timeout,
                                self.all()[-20:]))

    def wait_path(self, path, count=1, timeout=DELIVERY_TIMEOUT):
        return self.wait_for(lambda r: r.path == path, count, timeout, "requests to " + path)

    def wait_timer(self, timer_id, count=1, timeout=DELIVERY_TIMEOUT):
        return self.wait_for(lambda r: r.timer_id == timer_id, count, timeout,
                             "deliveries of " + timer_id)

    def close(self):
        self.closing.set()
        with self.lock:
            for b in self.behaviours.values():
                if b.gate is not None:
                    b.gate.set()
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------------------
# Test case base


class SkyringTestCase(unittest.TestCase):
    """Helpers: self.node()/self.receiver() are cleaned up automatically, and on a failure
    the stderr of every node of the test is printed."""

    maxDiff = 4000

    def setUp(self):
        self._nodes = []

    def start_node(self, *args, **kw):
        n = Node(*args, **kw)
        self._nodes.append(n)
        self.addCleanup(n.close)
        return n

    def track(self, node):
        self._nodes.append(node)
        self.addCleanup(node.close)
        return node

    def start_receiver(self):
        r = Receiver()
        self.addCleanup(r.close)
        return r

    def run(self, result=None):
        # Attach node logs to failures and errors of this test.
        before_f = len(result.failures) if result else 0
        before_e = len(result.errors) if result else 0
        res = super().run(result)
        result = result or res
        if result is not None and (len(result.failures) > before_f or len(result.errors) > before_e):
            nodes = list(getattr(self, "_nodes", []))
            nodes += [v for v in vars(type(self)).values() if isinstance(v, Node)]
            for n in nodes:
                print("\n==== skyring stderr (%s) ====\n%s" % (n.data_dir, n.log()))
        return res

    def path(self, name="hook"):
        """A receiver path of this test's own: "/<test method>/<name>"."""
        return "/" + self.id().rsplit(".", 1)[-1] + "/" + name

    # ---- assertions
    def assertError(self, resp, status, mentions=None):
        """An error answer: status, x-skyring-reason header, JSON {"error": msg}; optionally
        the message mentions a word (the field name)."""
        self.assertEqual(resp.status, status, resp)
        reason = resp.header("x-skyring-reason")
        self.assertTrue(reason, "no x-skyring-reason header: %r" % resp)
        try:
            body = resp.json()
        except ValueError:
            self.fail("error body is not JSON: %r" % resp)
        self.assertIsInstance(body, dict, resp)
        self.assertIsInstance(body.get("error"), str, resp)
        self.assertTrue(body["error"], resp)
        if mentions is not None:
            self.assertIn(mentions, body["error"], resp)
            self.assertIn(mentions, reason, resp)
        return body["error"]

    def assertCreated(self, resp, timer_id=None):
        self.assertEqual(resp.status, 201, resp)
        tid = resp.json()["id"]
        self.assertEqual(resp.header("location"), "/timer/" + tid, resp)
        if timer_id is not None:
            self.assertEqual(tid, timer_id)
        return tid

    def assertAlive(self, node):
        """The node answers /ping and a normal create works (after a bad-input case)."""
        c = Client(node.port, timeout=15)
        try:
            r = c.get("/ping")
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.body, b"pong")
            r = c.create(timer_body("http://127.0.0.1:9/never", timeout=3600_000))
            self.assertEqual(r.status, 201, r)
            tid = r.json()["id"]
            self.assertEqual(c.state(tid), "pending")
            self.assertEqual(c.delete("/timer/" + tid).status, 202)
        finally:
            c.close()
        self.assertTrue(node.running(), "node died:\n" + node.log())


def raw_exchange(port, data, timeout=5.0, read_until_close=True, max_bytes=1 << 20):
    """Sends raw bytes on a fresh connection, returns what comes back (until close/timeout)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        if data:
            s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while len(out) < max_bytes and time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
            if not read_until_close and b"\r\n\r\n" in out:
                break
        return out
    finally:
        s.close()


def parse_status(raw):
    """Status code of the first response in raw bytes (None if none)."""
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    return int(m.group(1)) if m else None


def send_while_reading(port, head, body_chunks, timeout=10.0):
    """Sends head then body_chunks (an iterable of bytes) from a thread while this thread
    reads the answer, as curl does: a server may answer (413) and close before the client
    finished sending. Returns (raw answer bytes, send error or None)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    err = []

    def sender():
        try:
            s.sendall(head)
            for chunk in body_chunks:
                s.sendall(chunk)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        t.join(timeout)
        s.close()
    return out, (err[0] if err else None)


def split_response(raw):
    """(status, {lower header: value}, body) of the first response in raw bytes."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0]) if lines else None
    status = int(m.group(1)) if m else None
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = headers.get("content-length")
    if n is not None and n.isdigit():
        body = body[:int(n)]
    return status, headers, body


class SharedNodeTestCase(SkyringTestCase):
    """One node and one receiver for every test of the class (each test uses its own ids and
    receiver paths) and a keep-alive client per test as self.c."""

    @classmethod
    def setUpClass(cls):
        cls.node = Node()
        cls.receiver = Receiver()

    @classmethod
    def tearDownClass(cls):
        cls.receiver.close()
        cls.node.close()

    def setUp(self):
        super().setUp()
        self.c = Client(self.node.port)
        self.addCleanup(self.c.close)
