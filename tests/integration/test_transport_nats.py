"""The `nats` transport (SPEC section 4) end to end: the real `skyring` binary publishing to a
real nats-server, observed by a subscriber that speaks the NATS text protocol over a raw socket.

Servers: `ring` is the node's own --nats (the node is then a member of a 1-node ring) and
carries the `nats:subject` form; `side` is a second server reached with
`nats://127.0.0.1:PORT/subject`, with its monitoring port for connection counts. Outage tests
use servers of their own, stopped and restarted on the same port.
"""

import json
import socket
import subprocess
import threading
import time
import unittest
import urllib.request

from harness import Client, Node, SkyringTestCase, free_port, timer_body, wait_until
from cluster_harness import nats_server_bin

FAST_RETRY = {"attempts": 40, "backoff_ms": 100, "max_backoff_ms": 300}


class NatsServer:
    """`nats-server -a 127.0.0.1 -p PORT -m MONITOR_PORT`; stop() + start() keeps both ports."""

    def __init__(self, start=True):
        self.bin = nats_server_bin()
        self.port = free_port()
        self.monitor_port = free_port()
        self.proc = None
        self.lines = []
        if start:
            self.start()

    @property
    def url(self):
        return "nats://127.0.0.1:%d" % self.port

    def uri(self, subject):
        return "%s/%s" % (self.url, subject)

    def start(self, timeout=20.0):
        assert self.proc is None
        cmd = [self.bin, "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError("nats-server exited with %s" % self.proc.returncode)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.settimeout(2)
                    return s.recv(4096).startswith(b"INFO")
            except OSError:
                return False

        wait_until(up, timeout, interval=0.05, msg="nats-server answers on %d" % self.port)
        return self

    def stop(self):
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def monitor(self, path):
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.monitor_port, path),
                                    timeout=10) as r:
            return json.loads(r.read().decode("utf-8"))


class Msg:
    def __init__(self, subject, reply, headers, payload):
        self.subject = subject
        self.reply = reply
        self.headers = headers  # dict
        self.payload = payload  # bytes

    def __repr__(self):
        return "<Msg %s %r %r>" % (self.subject, self.headers, self.payload[:100])


class Subscriber:
    """A raw-socket NATS client: CONNECT, SUB, PING/PONG; records MSG/HMSG on `subject`. With
    reply=True it answers each request with `PUB <reply> 2\\r\\nok\\r\\n`."""

    MAX_BYTES = 1 << 20

    def __init__(self, port, subject, reply=False):
        self.reply = reply
        self.messages = []
        self.cond = threading.Condition()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self._read_line()  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'
                          b"SUB " + subject.encode() + b" 1\r\nPING\r\n")
        while True:  # bounded by the socket timeout
            line = self._read_line()
            if line == b"PONG":
                break
            if line.startswith(b"-ERR"):
                raise AssertionError("nats-server refused the subscriber: %r" % line)
        self.sock.settimeout(None)
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("nats-server closed the connection")
        self.buf += data
        assert len(self.buf) < 4 * self.MAX_BYTES, "runaway input"

    def _read_line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _read_exact(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _run(self):
        try:
            while not self.closed:
                line = self._read_line()
                if line == b"PING":
                    self.sock.sendall(b"PONG\r\n")
                    continue
                parts = line.split(b" ")
                if parts[0] == b"MSG":  # MSG subject sid [reply] bytes
                    reply = parts[3] if len(parts) == 5 else None
                    raw = self._read_exact(int(parts[-1]))
                    self._got(parts[1], reply, {}, raw)
                elif parts[0] == b"HMSG":  # HMSG subject sid [reply] hdr_bytes total_bytes
                    reply = parts[3] if len(parts) == 6 else None
                    hdr_len, total = int(parts[-2]), int(parts[-1])
                    raw = self._read_exact(total)
                    headers = {}
                    for h in raw[:hdr_len].split(b"\r\n")[1:]:
                        if b":" in h:
                            k, v = h.split(b":", 1)
                            headers[k.decode()] = v.strip().decode()
                    self._got(parts[1], reply, headers, raw[hdr_len:])
        except (OSError, EOFError, ValueError):
            pass

    def _got(self, subject, reply, headers, payload):
        if self.reply and reply is not None:
            self.sock.sendall(b"PUB " + reply + b" 2\r\nok\r\n")
        with self.cond:
            self.messages.append(Msg(subject.decode(), reply, headers, payload))
            self.cond.notify_all()

    def wait(self, count=1, timeout=20.0, subject=None):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [m for m in self.messages if subject is None or m.subject == subject]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("%d message(s) on %s not received in %.0f s; got %r"
                                         % (count, subject, timeout, self.messages))
                self.cond.wait(left)

    def for_subject(self, subject):
        with self.cond:
            return [m for m in self.messages if m.subject == subject]

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def nats_body(uri, method="publish", **kw):
    return timer_body(uri, transport="nats", method=method, **kw)


class NatsTransportTest(SkyringTestCase):

    @classmethod
    def setUpClass(cls):
        cls.ring = NatsServer()
        cls.side = NatsServer()
        try:
            cls.node = Node(args=["--nats", cls.ring.url, "--node-id", "nats-it"])
        except BaseException:
            cls.ring.stop()
            cls.side.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.node.close()
        cls.ring.stop()
        cls.side.stop()

    def setUp(self):
        super().setUp()
        self.c = Client(self.node.port)
        self.addCleanup(self.c.close)

    def subscribe(self, server, subject, reply=False):
        s = Subscriber(server.port, subject, reply=reply)
        self.addCleanup(s.close)
        return s

    def server(self, start=True):
        s = NatsServer(start=start)
        self.addCleanup(s.stop)
        return s

    def subject(self, name):
        return "it.%s.%s" % (self.id().rsplit(".", 1)[-1], name)

    def create(self, body, client=None, timer_id=None):
        c = client or self.c
        # The node serves timers once it owns its ring (a moment after it joined).
        resp = wait_until(lambda: (lambda r: r if r.status != 503 else None)(
            c.create(body, timer_id=timer_id)), 30, interval=0.1, msg="create answered")
        return self.assertCreated(resp)

    def wait_state(self, tid, state, client=None, timeout=30):
        c = client or self.c
        wait_until(lambda: c.state(tid) == state, timeout,
                   msg="timer %s becomes %s (now %r)" % (tid, state, c.timer(tid)))
        return c.timer(tid)

    # ---------------------------------------------------------------- payloads

    def test_string_object_and_no_payload_with_both_uri_forms(self):
        ring_sub = self.subscribe(self.ring, "it.>")
        side_sub = self.subscribe(self.side, "it.>")
        cases = [
            (self.side, side_sub, self.side.uri(self.subject("text")), "hello, nats \u00e9",
             "hello, nats \u00e9".encode()),
            (self.side, side_sub, self.side.uri(self.subject("object")), {"a": 1, "b": [True]},
             None),
            (self.ring, ring_sub, "nats:" + self.subject("text"), "via --nats", b"via --nats"),
            (self.ring, ring_sub, "nats:" + self.subject("object"), {"k": "v"}, None),
            (self.ring, ring_sub, "nats:" + self.subject("none"), None, b""),
        ]
        ids = []
        for _, _, uri, data, _ in cases:
            ids.append(self.create(nats_body(uri, timeout=100, data=data)))
        for tid, (_, sub, uri, data, want) in zip(ids, cases):
            subject = uri.rsplit("/", 1)[-1].replace("nats:", "")
            got = sub.wait(1, subject=subject)
            self.assertEqual(len(got), 1, got)
            if isinstance(data, dict):
                self.assertEqual(json.loads(got[0].payload), data)
            else:
                self.assertEqual(got[0].payload, want)
            self.assertEqual(got[0].headers.get("Skyring-Timer-Id"), tid)
            self.assertEqual(got[0].headers.get("Skyring-Attempt"), "1")
            t = self.wait_state(tid, "succeeded")
            self.assertEqual(t["attempts"], 1)

    def test_many_timers_share_one_connection(self):
        sub = self.subscribe(self.side, self.subject("many"))
        before = self.side.monitor("/varz")["total_connections"]
        ids = [self.create(nats_body(self.side.uri(self.subject("many")), timeout=50 + i,
                                     data=str(i))) for i in range(60)]
        got = sub.wait(len(ids), timeout=30)
        self.assertEqual(sorted(m.headers["Skyring-Timer-Id"] for m in got), sorted(ids))
        for tid in ids:
            self.wait_state(tid, "succeeded")
        # The node's connection to `side` may predate this test (opened by another one): at
        # most one new connection for 60 deliveries.
        after = self.side.monitor("/varz")["total_connections"]
        self.assertLessEqual(after - before, 1, "deliveries opened %d connections" % (after - before))
        node_conns = [c for c in self.side.monitor("/connz")["connections"]
                      if c.get("name") == "skyring-delivery"]
        self.assertEqual(len(node_conns), 1, node_conns)

    # ---------------------------------------------------------------- failures

    def test_bad_uri_or_method_is_400(self):
        for method, uri, field in [
                ("post", self.side.uri("a"), "callback.method"),
                ("get", "nats:a", "callback.method"),
                ("publish", "nats:a b", "callback.uri"),
                ("publish", "nats:a.*", "callback.uri"),
                ("publish", "nats:a..b", "callback.uri"),
                ("publish", "nats://127.0.0.1:4222/", "callback.uri"),
                ("publish", "nats://127.0.0.1:99999/a", "callback.uri"),
                ("request", "http://127.0.0.1/a", "callback.uri")]:
            self.assertError(self.c.create(nats_body(uri, method=method, timeout=1000)), 400,
                             field)

    def test_nats_subject_form_needs_nats_on_the_node(self):
        node = self.start_node()  # no --nats
        c = node.client()
        self.assertError(c.create(nats_body("nats:orders", timeout=1000)), 400, "--nats")
        self.assertEqual(c.create(nats_body(self.side.uri("orders"), timeout=60000)).status, 201)

    def test_server_down_at_due_time_then_back(self):
        srv = self.server(start=False)
        tid = self.create(nats_body(srv.uri("outage.x"), timeout=10, data="late", retry=FAST_RETRY))
        wait_until(lambda: (self.c.timer(tid) or {}).get("attempts", 0) >= 2, 30,
                   msg="retried while the server is down")
        t = self.c.timer(tid)
        self.assertEqual(t["state"], "retrying", t)
        self.assertIn("connect", t["last_error"])
        srv.start()
        sub = self.subscribe(srv, "outage.x")
        got = sub.wait(1, timeout=30)
        self.assertEqual(got[0].payload, b"late")
        self.assertEqual(got[0].headers["Skyring-Timer-Id"], tid)
        self.wait_state(tid, "succeeded")

    def test_connection_lost_between_deliveries_then_back(self):
        srv = self.server()
        sub = self.subscribe(srv, "lost.x")
        first = self.create(nats_body(srv.uri("lost.x"), timeout=10, data="1"))
        sub.wait(1)
        self.wait_state(first, "succeeded")
        sub.close()
        srv.stop()  # the node's pooled connection breaks
        tid = self.create(nats_body(srv.uri("lost.x"), timeout=10, data="2", retry=FAST_RETRY))
        wait_until(lambda: (self.c.timer(tid) or {}).get("attempts", 0) >= 2, 30)
        srv.start()
        sub = self.subscribe(srv, "lost.x")
        self.assertEqual(sub.wait(1, timeout=30)[0].payload, b"2")
        self.wait_state(tid, "succeeded")

    def test_never_comes_back_is_failed(self):
        uri = "nats://127.0.0.1:%d/gone" % free_port()
        tid = self.create(nats_body(uri, timeout=10,
                                    retry={"attempts": 3, "backoff_ms": 50, "max_backoff_ms": 100}))
        t = self.wait_state(tid, "failed")
        self.assertEqual(t["attempts"], 3)
        self.assertIn("connect", t["last_error"])

    def test_request_without_then_with_a_responder(self):
        subject = self.subject("svc")
        tid = self.create(nats_body(self.side.uri(subject), method="REQUEST", timeout=10,
                                    data={"q": 1}, retry=FAST_RETRY))
        wait_until(lambda: (self.c.timer(tid) or {}).get("attempts", 0) >= 2, 30,
                   msg="retried while nobody answers")
        t = self.c.timer(tid)
        self.assertEqual(t["state"], "retrying", t)
        self.assertIn("no responders", t["last_error"])
        responder = self.subscribe(self.side, subject, reply=True)
        got = responder.wait(1, timeout=30)
        self.assertEqual(json.loads(got[0].payload), {"q": 1})
        self.assertIsNotNone(got[0].reply)
        self.wait_state(tid, "succeeded")
        # And through the node's own --nats servers.
        responder = self.subscribe(self.ring, subject, reply=True)
        tid = self.create(nats_body("nats:" + subject, method="request", timeout=10))
        responder.wait(1)
        self.wait_state(tid, "succeeded")

    # ---------------------------------------------------------------- cancel and replace

    def test_delete_cancels_and_put_replaces(self):
        sub = self.subscribe(self.side, self.subject("*"))
        cancelled = self.create(nats_body(self.side.uri(self.subject("cancelled")), timeout=800))
        self.assertEqual(self.c.delete("/timer/" + cancelled).status, 202)
        replaced = self.create(nats_body(self.side.uri(self.subject("old")), timeout=800,
                                         data="old"))
        r = self.c.put("/timer/" + replaced, nats_body(self.side.uri(self.subject("new")),
                                                       timeout=900, data="new"))
        self.assertEqual(r.status, 200, r)
        # A sentinel due after both: once it arrived, the others had their chance.
        sentinel = self.create(nats_body(self.side.uri(self.subject("sentinel")), timeout=1500))
        sub.wait(1, subject=self.subject("sentinel"))
        self.wait_state(sentinel, "succeeded")
        new = sub.for_subject(self.subject("new"))
        self.assertEqual([m.payload for m in new], [b"new"])
        self.assertEqual(new[0].headers["Skyring-Timer-Id"], replaced)
        self.assertEqual(sub.for_subject(self.subject("old")), [])
        self.assertEqual(sub.for_subject(self.subject("cancelled")), [])

    # ---------------------------------------------------------------- crash

    def restart_and_expect_delivery(self, node, srv, subject, tid, payload):
        """After a kill -9: NATS up, a subscriber on `subject`, the node restarted on its data
        dir; the timer `tid` is delivered with `payload` and ends succeeded. Returns the
        subscriber."""
        srv.start()
        sub = self.subscribe(srv, subject)
        node.start()
        c = node.client()
        got = sub.wait(1, timeout=30)
        self.assertEqual(got[0].payload, payload)
        self.assertEqual(got[0].headers["Skyring-Timer-Id"], tid)
        self.wait_state(tid, "succeeded", client=c)
        return sub

    def test_kill9_while_retrying_then_delivered_after_restart(self):
        srv = self.server(start=False)
        node = self.start_node()
        c = node.client()
        tid = self.create(nats_body(srv.uri("crash.x"), timeout=10, data="survives",
                                    retry=FAST_RETRY), client=c)
        wait_until(lambda: (c.timer(tid) or {}).get("attempts", 0) >= 2, 30,
                   msg="retried while the server is down")
        node.kill()
        self.restart_and_expect_delivery(node, srv, "crash.x", tid, b"survives")

    def test_kill9_during_a_publish_then_delivered_after_restart(self):
        # A listener that accepts and never speaks NATS: the node's connect waits for the
        # server's INFO until its connect timeout (2 s), so the attempt is in flight
        # ("executing") that long and the kill lands inside it.
        srv = self.server(start=False)
        hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hole.bind(("127.0.0.1", srv.port))
        hole.listen(16)
        hole.settimeout(0.05)
        held = []
        done = threading.Event()

        def hold():
            while not done.is_set():
                try:
                    conn, _ = hole.accept()
                    held.append(conn)
                except socket.timeout:
                    continue
                except OSError:
                    return

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()

        def close_hole():
            done.set()
            holder.join(5)
            for conn in held:
                conn.close()
            hole.close()

        self.addCleanup(close_hole)
        node = self.start_node()
        c = node.client()
        tid = self.create(nats_body(srv.uri("crash.y"), timeout=10, data="in flight",
                                    retry=FAST_RETRY), client=c)
        wait_until(lambda: c.state(tid) == "executing", 30, interval=0.01,
                   msg="an attempt in flight against the silent listener")
        node.kill()
        close_hole()
        sub = self.restart_and_expect_delivery(node, srv, "crash.y", tid, b"in flight")
        self.assertEqual(len(sub.for_subject("crash.y")), 1)


if __name__ == "__main__":
    unittest.main()
