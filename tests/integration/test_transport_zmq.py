"""The `zmq` transport (SPEC section 4) against real ZeroMQ receivers (pyzmq).

The node connects; the receivers here bind on 127.0.0.1 (PULL for `push`, SUB subscribed to
"timeout" for `pub`). Every message is two frames: b"timeout", then the payload.

pyzmq comes from the Debian package python3-zmq (/usr/lib/python3/dist-packages), which the
python3 on PATH may not see by default. Without it these tests fail; they never skip.
"""

import json
import sys
import time
import unittest

try:
    import zmq
except ImportError:
    sys.path.append("/usr/lib/python3/dist-packages")
    try:
        import zmq
    except ImportError as e:  # reported by every test, as a failure
        zmq = None
        ZMQ_IMPORT_ERROR = "pyzmq is not importable (%s): install python3-zmq" % e

from harness import Node, SkyringTestCase, free_port, timer_body, wait_until

RECV_TIMEOUT = 15.0


class ZmqReceiver:
    """A PULL or SUB socket bound on 127.0.0.1:port, with a monitor counting the connections it
    accepted. Used from the test thread only."""

    def __init__(self, kind, port=None, topic=b"timeout"):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL if kind == "push" else zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        if kind == "pub":
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_ACCEPTED)
        self.port = port or free_port()
        self.sock.bind("tcp://127.0.0.1:%d" % self.port)
        self.accepted_count = 0
        self.closed = False

    @property
    def uri(self):
        return "tcp://127.0.0.1:%d" % self.port

    def recv(self, timeout=RECV_TIMEOUT):
        """The next message's frames; AssertionError after the deadline."""
        if not self.sock.poll(int(timeout * 1000)):
            raise AssertionError("no zmq message within %.1f s" % timeout)
        return self.sock.recv_multipart(zmq.NOBLOCK)

    def nothing(self, timeout):
        """True if no message arrives within timeout seconds."""
        return not self.sock.poll(int(timeout * 1000))

    def accepted(self):
        """Connections accepted so far (each is reported before its first message)."""
        for _ in range(10000):
            if not self.monitor.poll(0):
                break
            frames = self.monitor.recv_multipart(zmq.NOBLOCK)
            if int.from_bytes(frames[0][:2], "little") == zmq.EVENT_ACCEPTED:
                self.accepted_count += 1
        return self.accepted_count

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)
        self.ctx.term()


def zmq_body(uri, method="push", **kw):
    return timer_body(uri, method=method, transport="zmq", **kw)


class ZmqTestBase(SkyringTestCase):

    def setUp(self):
        super().setUp()
        if zmq is None:
            self.fail(ZMQ_IMPORT_ERROR)

    def receiver(self, kind, port=None):
        r = ZmqReceiver(kind, port)
        self.addCleanup(r.close)
        return r

    def wait_state(self, c, tid, state, timeout=20):
        wait_until(lambda: c.state(tid) == state, timeout,
                   msg="timer %s becomes %s (now %r)" % (tid, state, c.timer(tid)))
        return c.timer(tid)


class ZmqDeliveryTest(ZmqTestBase):
    """One node for every test of the class; each test has its own receivers and ports."""

    @classmethod
    def setUpClass(cls):
        cls.node = Node() if zmq is not None else None

    @classmethod
    def tearDownClass(cls):
        if cls.node is not None:
            cls.node.close()

    def setUp(self):
        super().setUp()
        self.c = self.node.client()
        self.addCleanup(self.c.close)

    def create(self, body, timer_id=None):
        return self.assertCreated(self.c.create(body, timer_id=timer_id))

    def check_payloads(self, kind):
        rec = self.receiver(kind)
        obj = {"a": [1, 2], "s": "x y", "n": None}
        ids = [self.create(zmq_body(rec.uri, kind, timeout=20, data="plain text")),
               self.create(zmq_body(rec.uri, kind, timeout=40, data=obj)),
               self.create(zmq_body(rec.uri, kind, timeout=60))]
        got = [rec.recv() for _ in ids]
        for tid in ids:
            t = self.wait_state(self.c, tid, "succeeded")
            self.assertEqual(t["attempts"], 1, t)
        for frames in got:
            self.assertEqual(len(frames), 2, frames)
            self.assertEqual(frames[0], b"timeout")
        payloads = sorted(f[1] for f in got)
        self.assertIn(b"plain text", payloads)
        self.assertIn(b"", payloads)
        objs = [json.loads(p) for p in payloads if p.startswith(b"{")]
        self.assertEqual(objs, [obj])

    def test_push_string_object_and_empty_payloads(self):
        self.check_payloads("push")

    def test_pub_string_object_and_empty_payloads(self):
        self.check_payloads("pub")

    def test_receiver_down_at_due_time_then_up(self):
        for kind, reason in (("push", "no connected peer"), ("pub", "no subscriber")):
            with self.subTest(kind=kind):
                port = free_port()
                uri = "tcp://127.0.0.1:%d" % port
                tid = self.create(zmq_body(uri, kind, timeout=10, data="late",
                                           retry={"attempts": 50, "backoff_ms": 100,
                                                  "max_backoff_ms": 300}))
                wait_until(lambda: (self.c.timer(tid) or {}).get("attempts", 0) >= 1, 20,
                           msg="a first failed attempt of %s" % tid)
                t = self.c.timer(tid)
                self.assertIn(t["state"], ("retrying", "executing"), t)
                self.assertIn(reason, t["last_error"], t)
                rec = self.receiver(kind, port)
                self.assertEqual(rec.recv(), [b"timeout", b"late"])
                t = self.wait_state(self.c, tid, "succeeded")
                self.assertGreaterEqual(t["attempts"], 2, t)
                self.assertTrue(rec.nothing(0.3), "delivered more than once")

    def test_receiver_never_up_fails_after_the_policy(self):
        for kind, reason in (("push", "no connected peer"), ("pub", "no subscriber")):
            with self.subTest(kind=kind):
                uri = "tcp://127.0.0.1:%d" % free_port()
                tid = self.create(zmq_body(uri, kind, timeout=10, data="x",
                                           retry={"attempts": 3, "backoff_ms": 50,
                                                  "max_backoff_ms": 100}))
                t = self.wait_state(self.c, tid, "failed")
                self.assertEqual(t["attempts"], 3, t)
                self.assertIn(reason, t["last_error"], t)

    def test_many_timers_to_one_destination_share_one_socket(self):
        rec = self.receiver("push")
        n = 40
        ids = [self.create(zmq_body(rec.uri, timeout=50 + i * 5, data="m%d" % i))
               for i in range(n)]
        got = [rec.recv() for _ in range(n)]
        self.assertEqual(sorted(f[1] for f in got), sorted(b"m%d" % i for i in range(n)))
        for tid in ids:
            self.wait_state(self.c, tid, "succeeded")
        self.assertEqual(rec.accepted(), 1, "one connection for every delivery")

    def test_bad_method_or_uri_is_400(self):
        good = "tcp://127.0.0.1:%d" % free_port()
        for method in ("post", "pull", "sub", ""):
            self.assertError(self.c.create(zmq_body(good, method, timeout=1000)), 400,
                             "callback.method")
        for uri in ("http://127.0.0.1:80/", "tcp://*:5555", "tcp://127.0.0.1", "tcp://h:0",
                    "tcp://10.0.0.1;127.0.0.1:5555", "inproc://x"):
            self.assertError(self.c.create(zmq_body(uri, "push", timeout=1000)), 400,
                             "callback.uri")
        # Case-insensitive method.
        tid = self.create(zmq_body(good, "PUSH", timeout=3600_000))
        self.assertEqual(self.c.delete("/timer/" + tid).status, 202)

    def test_delete_cancels_and_put_replaces(self):
        rec = self.receiver("push")
        gone = self.create(zmq_body(rec.uri, timeout=1500, data="cancelled"))
        old = self.create(zmq_body(rec.uri, timeout=1500, data="old"))
        r = self.c.delete("/timer/" + gone)
        self.assertEqual(r.status, 202, r)
        self.assertEqual(self.c.state(gone), "cancelled")
        r = self.c.put("/timer/" + old, zmq_body(rec.uri, "push", timeout=10, data="new"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(rec.recv(), [b"timeout", b"new"])
        self.wait_state(self.c, old, "succeeded")
        # Past the original due time of both: neither the cancelled nor the replaced one comes.
        self.assertTrue(rec.nothing(2.5), "a cancelled or replaced timer was delivered")
        self.assertEqual(self.c.state(gone), "cancelled")


class ZmqCrashTest(ZmqTestBase):

    def test_kill9_during_an_attempt_then_restart_delivers(self):
        node = self.start_node()
        c = node.client()
        port = free_port()
        uri = "tcp://127.0.0.1:%d" % port
        retry = {"attempts": 100, "backoff_ms": 100, "max_backoff_ms": 300}
        push = self.assertCreated(c.create(zmq_body(uri, "push", timeout=10, data="p",
                                                    retry=retry), timer_id="zmq-crash-push"))
        pub = self.assertCreated(c.create(zmq_body(uri, "pub", timeout=10, data="q",
                                                   retry=retry), timer_id="zmq-crash-pub"))
        for tid in (push, pub):
            wait_until(lambda: (c.timer(tid) or {}).get("attempts", 0) >= 1, 20,
                       msg="a failed attempt of %s before the kill" % tid)
        # With no peer an attempt waits up to 200 ms (send_timeout_ms) for one, as "executing":
        # the kill lands inside such an attempt of the push timer.
        wait_until(lambda: c.state(push) == "executing", 20, interval=0.005,
                   msg="an attempt of the push timer in flight")
        node.kill()
        node.start()
        c = node.client()
        pull = self.receiver("push", port)
        self.assertEqual(pull.recv(), [b"timeout", b"p"])
        self.wait_state(c, push, "succeeded")
        self.assertTrue(pull.nothing(0.3), "delivered more than once")
        pull.close()
        # The same port, now a subscriber: the pub timer is still retrying and gets through.
        self.assertIn(c.state(pub), ("retrying", "executing"))
        sub = self.receiver("pub", port)
        self.assertEqual(sub.recv(), [b"timeout", b"q"])
        self.wait_state(c, pub, "succeeded")


if __name__ == "__main__":
    unittest.main()
