"""The `tcp` transport (SPEC section 4) against real TCP receivers started by the test.

Wire format: the payload (the `data` string as is, or the JSON object text) followed by "\\n",
over pooled connections of at most 8 per destination (TcpTransportOptions default).
"""

import socket
import threading
import time
import unittest

from harness import SkyringTestCase, free_port, timer_body, wait_until

POOL_BOUND = 8  # TcpTransportOptions::max_connections_per_destination (default)


class LineListener:
    """A TCP receiver on 127.0.0.1: records the bytes of every connection (accept order).

    accept=False listens with a backlog of 0 and does not accept until start_accepting(): once
    one connection (fill_backlog()) sits in the accept queue, the kernel drops further SYNs, so
    a client's connect hangs (a delivery stays in flight) until the listener accepts."""

    def __init__(self, port=0, accept=True):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128 if accept else 0)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.conns = []  # bytearray per accepted connection
        self.closing = threading.Event()
        self.threads = []
        self.fillers = []
        self.accepting = False
        if accept:
            self.start_accepting()

    def uri(self):
        return "tcp://127.0.0.1:%d" % self.port

    def fill_backlog(self):
        c = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.fillers.append(c)

    def start_accepting(self):
        assert not self.accepting
        self.accepting = True
        self.sock.settimeout(0.1)
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self.threads.append(t)

    def _accept_loop(self):
        for _ in range(10 ** 7):  # bounded; ends at close()
            if self.closing.is_set():
                return
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                buf = bytearray()
                self.conns.append(buf)
            t = threading.Thread(target=self._read_loop, args=(c, buf), daemon=True)
            t.start()
            self.threads.append(t)

    def _read_loop(self, c, buf):
        c.settimeout(0.1)
        try:
            for _ in range(10 ** 7):
                if self.closing.is_set():
                    return
                try:
                    chunk = c.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                with self.cond:
                    buf.extend(chunk)
                    self.cond.notify_all()
        finally:
            c.close()

    def accepts(self):
        with self.lock:
            return len(self.conns)

    def lines(self):
        """Complete lines of every connection (without the "\\n"), in connection order."""
        with self.lock:
            out = []
            for buf in self.conns:
                out += bytes(buf).split(b"\n")[:-1]
            return out

    def connection_bytes(self):
        with self.lock:
            return [bytes(b) for b in self.conns]

    def wait_lines(self, count, timeout=15.0, msg="lines"):
        deadline = time.monotonic() + timeout
        with self.cond:
            for _ in range(100000):
                got = []
                for buf in self.conns:
                    got += bytes(buf).split(b"\n")[:-1]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.5))
        raise AssertionError("%s: %d of %d lines after %.1f s: %r"
                             % (msg, len(got), count, timeout, got[-10:]))

    def close(self):
        self.closing.set()
        for f in self.fillers:
            f.close()
        try:
            self.sock.close()
        except OSError:
            pass
        for t in self.threads:
            t.join(5)


class TcpTransportTest(SkyringTestCase):

    def setUp(self):
        super().setUp()
        self.node = self.start_node()
        self.c = self.node.client()

    def listener(self, **kw):
        lis = LineListener(**kw)
        self.addCleanup(lis.close)
        return lis

    def create(self, uri, **kw):
        r = self.c.create(timer_body(uri, transport="tcp", method=kw.pop("method", "send"), **kw))
        return self.assertCreated(r)

    def wait_state(self, tid, state, timeout=20):
        wait_until(lambda: self.c.state(tid) == state, timeout,
                   msg="timer %s becomes %s (now %r)" % (tid, state, self.c.timer(tid)))
        return self.c.timer(tid)

    # ---------------------------------------------------------------- payload

    def test_string_object_and_empty_payloads_are_one_line_each(self):
        cases = [("text", "hello tcp \u00e9", b"hello tcp \xc3\xa9"),
                 ("object", {"k": "v", "n": 1, "nested": {"s": "a\nb"}},
                  b'{"k":"v","n":1,"nested":{"s":"a\\nb"}}'),
                 ("none", None, b"")]
        for name, data, want in cases:
            with self.subTest(name):
                lis = self.listener()
                tid = self.create(lis.uri(), timeout=50, data=data)
                lis.wait_lines(1)
                # The exact bytes: the payload and one "\n", nothing before or after.
                wait_until(lambda: self.c.state(tid) == "succeeded", msg="succeeded")
                self.assertEqual(lis.connection_bytes(), [want + b"\n"])
                t = self.c.timer(tid)
                self.assertEqual(t["attempts"], 1)
                self.assertIsNone(t["last_error"])

    def test_method_is_ignored_but_uri_is_strict(self):
        lis = self.listener()
        tid = self.create(lis.uri(), timeout=10, data="any method", method="WHATEVER")
        lis.wait_lines(1)
        self.wait_state(tid, "succeeded")
        for uri in ["tcp://127.0.0.1", "tcp://127.0.0.1:0", "tcp://127.0.0.1:70000",
                    "tcp://127.0.0.1:80/path", "tcp://127.0.0.1:80/", "tcp://u@127.0.0.1:80",
                    "tcp://127.0.0.1:80?x=1", "http://127.0.0.1:80", "tcp://[::1:80"]:
            with self.subTest(uri):
                r = self.c.create(timer_body(uri, transport="tcp", timeout=1000))
                self.assertError(r, 400, mentions="callback.uri")
        self.assertError(self.c.create(timer_body(lis.uri(), transport="tcp", method="",
                                                  timeout=1000)), 400, mentions="callback.method")

    # ---------------------------------------------------------------- failures and retries

    def test_receiver_down_at_due_time_then_back(self):
        port = free_port()  # nothing listens: connects are refused
        tid = self.create("tcp://127.0.0.1:%d" % port, timeout=10, data="late",
                          retry={"attempts": 20, "backoff_ms": 200, "max_backoff_ms": 400})
        t = wait_until(lambda: (lambda t: t if t["attempts"] >= 1 else None)(self.c.timer(tid)),
                       msg="first attempt failed")
        self.assertIn(t["state"], ("retrying", "executing"), t)
        self.assertRegex(t["last_error"] or "", r"refused|backing off", t)
        lis = self.listener(port=port)
        self.assertEqual(lis.wait_lines(1), [b"late"])
        t = self.wait_state(tid, "succeeded")
        self.assertGreaterEqual(t["attempts"], 2, t)
        self.assertEqual(lis.lines(), [b"late"])

    def test_receiver_never_back_fails_after_the_policy_attempts(self):
        port = free_port()
        tid = self.create("tcp://127.0.0.1:%d" % port, timeout=10, data="lost",
                          retry={"attempts": 3, "backoff_ms": 50, "max_backoff_ms": 100})
        t = self.wait_state(tid, "failed")
        self.assertEqual(t["attempts"], 3, t)
        self.assertRegex(t["last_error"], r"refused|backing off", t)

    # ---------------------------------------------------------------- pool

    def test_many_timers_to_one_destination_share_pooled_connections(self):
        lis = self.listener()
        n = 120
        for i in range(n):
            self.create(lis.uri(), timeout=200 + (i % 10) * 20, data="timer-%03d" % i)
        got = lis.wait_lines(n, timeout=30)
        self.assertEqual(sorted(got), sorted(b"timer-%03d" % i for i in range(n)))
        self.assertLessEqual(lis.accepts(), POOL_BOUND)
        self.assertLess(lis.accepts(), n // 4)
        # No connection ends with a partial line.
        for b in lis.connection_bytes():
            self.assertTrue(b == b"" or b.endswith(b"\n"), b[-50:])

    # ---------------------------------------------------------------- cancel and replace

    def test_delete_cancels_and_put_replaces(self):
        lis = self.listener()
        gone = self.create(lis.uri(), timeout=800, data="deleted")
        self.assertEqual(self.c.delete("/timer/" + gone).status, 202)
        old = self.create(lis.uri(), timeout=800, data="old")
        r = self.c.put("/timer/" + old, timer_body(lis.uri(), transport="tcp", method="send",
                                                   timeout=300, data="new"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(lis.wait_lines(1), [b"new"])
        due = max(self.c.timer(gone)["due"], self.c.timer(old)["due"])
        # Well past both original due times (node's wall clock), then nothing else arrived.
        wait_until(lambda: time.time() * 1000 > due + 700, 15, interval=0.05,
                   msg="past the original due times")
        self.wait_state(old, "succeeded")
        self.assertEqual(self.c.state(gone), "cancelled")
        self.assertEqual(lis.lines(), [b"new"])


class TcpCrashTest(SkyringTestCase):

    def test_kill9_during_delivery_is_delivered_after_restart(self):
        # Deterministic "in flight": the listener's accept queue is full (backlog 0, one
        # connection waiting), so the kernel drops the node's SYN and its connect hangs; the
        # timer is `executing` until the connect times out (5 s). The node is killed in that
        # state; then the listener accepts and the restarted node delivers.
        lis = LineListener(accept=False)
        self.addCleanup(lis.close)
        lis.fill_backlog()
        node = self.start_node()
        c = node.client()
        tid = self.assertCreated(c.create(timer_body(
            lis.uri(), transport="tcp", method="send", timeout=10, data="survives",
            retry={"attempts": 5, "backoff_ms": 200, "max_backoff_ms": 400})))
        wait_until(lambda: c.state(tid) == "executing", 10, interval=0.01,
                   msg="delivery in flight (connect held by a full accept queue)")
        node.kill()
        lis.start_accepting()
        node.start()
        c = node.client()
        self.assertEqual(lis.wait_lines(1), [b"survives"])
        t = wait_until(lambda: (lambda t: t if t["state"] == "succeeded" else None)(c.timer(tid)),
                       20, msg="succeeded after restart")
        # The attempt cut short by the kill was never recorded: it is not counted.
        self.assertEqual(t["attempts"], 1, t)
        self.assertEqual(lis.lines(), [b"survives"])
        node.stop()


if __name__ == "__main__":
    unittest.main()
