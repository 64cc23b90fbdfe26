"""Webhook delivery (SPEC sections 3 and 4) against a real HTTP receiver."""

import collections
import json
import re
import threading
import time
import unittest

from harness import (Client, Node, Receiver, SharedNodeTestCase, SkyringTestCase, timer_body,
                     wait_until)


class DeliveryTest(SharedNodeTestCase):

    def hook(self, name="hook"):
        return self.receiver.url(self.path(name))

    def create(self, **kw):
        uri = kw.pop("uri", None) or self.hook(kw.pop("name", "hook"))
        tid = kw.pop("timer_id", None)
        r = self.c.create(timer_body(uri, **kw), timer_id=tid)
        return self.assertCreated(r)

    def wait_state(self, tid, state, timeout=20):
        wait_until(lambda: self.c.state(tid) == state, timeout,
                   msg="timer %s becomes %s (now %r)" % (tid, state, self.c.timer(tid)))
        return self.c.timer(tid)

    # ---------------------------------------------------------------- timing and body

    def test_delivered_after_timeout_and_not_before(self):
        sent = time.time()
        tid = self.create(timeout=1000, data="payload")
        due = self.c.timer(tid)["due"]
        got = self.receiver.wait_timer(tid)
        self.assertEqual(len(got), 1)
        r = got[0]
        self.assertEqual(r.method, "POST")
        self.assertEqual(r.path, self.path())
        self.assertEqual(r.body, b"payload")
        self.assertGreaterEqual(r.time, sent + 1.0, "delivered before the timeout elapsed")
        self.assertGreaterEqual(r.time * 1000, due, "delivered before its due time")
        t = self.wait_state(tid, "succeeded")
        self.assertEqual(t["attempts"], 1)
        self.assertIsNone(t["last_error"])
        self.assertIn("completed", t)

    def test_many_timers_none_early(self):
        sent = {}
        for i in range(40):
            timeout = 100 + 25 * i
            t0 = time.time()
            sent[self.create(timeout=timeout, data=str(i), name="many")] = t0 + timeout / 1000
        got = self.receiver.wait_path(self.path("many"), count=len(sent), timeout=30)
        self.assertEqual(sorted(r.timer_id for r in got), sorted(sent))
        for r in got:
            self.assertGreaterEqual(r.time, sent[r.timer_id], "early delivery of %s" % r.timer_id)

    def test_string_body_is_text_plain(self):
        data = "h\u00e9llo w\u00f6rld \u6f22\u5b57 {not json}"
        tid = self.create(timeout=10, data=data)
        r = self.receiver.wait_timer(tid)[0]
        self.assertEqual(r.body, data.encode("utf-8"))
        self.assertEqual(r.header("content-type"), "text/plain; charset=utf-8")
        self.assertEqual(int(r.header("content-length")), len(data.encode("utf-8")))

    def test_object_body_is_json(self):
        data = {"a": 1, "b": [True, None, "x"], "c": {"d": "\u00e9"}}
        tid = self.create(timeout=10, data=data)
        r = self.receiver.wait_timer(tid)[0]
        self.assertEqual(r.header("content-type"), "application/json")
        self.assertEqual(json.loads(r.body.decode("utf-8")), data)

    def test_no_data_sends_empty_body(self):
        tid = self.create(timeout=10)
        r = self.receiver.wait_timer(tid)[0]
        self.assertEqual(r.body, b"")
        self.assertIn(r.header("content-length", "0"), ("0",))
        self.assertIsNone(r.header("transfer-encoding"))

    def test_headers(self):
        tid = self.create(timeout=10, data="h", headers={"X-Custom": "v1", "Authorization": "Bearer t"},
                          timer_id="dlv-headers-1")
        r = self.receiver.wait_timer(tid)[0]
        self.assertRegex(r.header("user-agent"), r"^skyring/\d+\.\d+")
        self.assertEqual(r.header("x-skyring-timer-id"), tid)
        self.assertEqual(r.header("idempotency-key"), tid)
        self.assertEqual(r.header("x-skyring-attempt"), "1")
        self.assertEqual(r.header("x-custom"), "v1")
        self.assertEqual(r.header("authorization"), "Bearer t")

    def test_ip_and_host_name_destinations_send_the_same_request(self):
        # 127.0.0.1 goes through Skyring's own HTTP client, "localhost" through libcurl: a
        # receiver sees the same method, body and Skyring headers from both.
        by_ip = self.hook("via-ip")
        by_name = by_ip.replace("127.0.0.1", "localhost", 1)
        self.assertNotEqual(by_ip, by_name)
        got = {}
        for label, uri in (("ip", by_ip), ("name", by_name)):
            tid = self.create(uri=uri, timeout=10, data={"k": label}, headers={"X-Custom": label})
            got[label] = self.receiver.wait_timer(tid)[0]
            self.wait_state(tid, "succeeded")
        for label, r in got.items():
            self.assertEqual(r.method, "POST", label)
            self.assertEqual(json.loads(r.body), {"k": label})
            self.assertEqual(r.header("content-type"), "application/json", label)
            self.assertEqual(r.header("x-custom"), label)
            self.assertEqual(r.header("x-skyring-attempt"), "1", label)
            self.assertRegex(r.header("user-agent"), r"^skyring/\d+\.\d+", label)
        self.assertIsNone(got["ip"].header("accept"))      # the plain client sends no Accept
        self.assertEqual(got["name"].header("accept"), "*/*")  # libcurl's default

    def test_callback_headers_cannot_break_framing_or_spoof_identity(self):
        # Framing and identity headers are the node's: a callback header may not change how
        # the body is framed (request smuggling) or what the receiver dedups on.
        hdrs = {"Content-Length": "2", "Transfer-Encoding": "chunked",
                "Idempotency-Key": "spoofed", "X-Skyring-Timer-Id": "spoofed",
                "X-Skyring-Attempt": "99", "X-Fine": "yes"}
        tid = self.create(timeout=10, data="0123456789", headers=hdrs)
        r = self.receiver.wait_timer(tid)[0]
        self.assertEqual(r.body, b"0123456789")
        self.assertEqual(r.header("idempotency-key"), tid)
        self.assertEqual(r.header("x-skyring-attempt"), "1")
        self.assertEqual(r.header("x-fine"), "yes")
        self.assertIsNone(r.header("transfer-encoding"))
        names = [k.lower() for k, _ in r.raw_headers]
        for h in ("content-length", "idempotency-key", "x-skyring-timer-id", "x-skyring-attempt"):
            self.assertEqual(names.count(h), 1, "header %s sent %d times" % (h, names.count(h)))
        self.assertEqual(self.receiver.for_timer("spoofed"), [])
        self.wait_state(tid, "succeeded")

    def test_methods(self):
        ids = {}
        for m in ("put", "patch", "get", "delete", "options", "head", "POST", "Patch"):
            ids[self.create(timeout=10, method=m, data={"m": m}, name="m-" + m)] = m
        for tid, m in ids.items():
            r = self.receiver.wait_timer(tid)[0]
            self.assertEqual(r.method, m.upper(), r)
            self.assertEqual(r.path, self.path("m-" + m))
            if m != "head":
                self.assertEqual(json.loads(r.body), {"m": m})
        for tid in ids:
            self.wait_state(tid, "succeeded")

    def test_uri_query_string_is_kept(self):
        uri = self.hook("q") + "?a=1&b=two%20words"
        tid = self.create(uri=uri, timeout=10)
        r = self.receiver.wait_timer(tid)[0]
        self.assertEqual(r.path, self.path("q") + "?a=1&b=two%20words")

    def test_connections_are_reused(self):
        n = 6
        ids = []
        for i in range(n):
            ids.append(self.create(timeout=10, name="ka"))
            self.receiver.wait_timer(ids[-1])
            self.wait_state(ids[-1], "succeeded")
        peers = {r.peer for r in self.receiver.for_path(self.path("ka"))}
        self.assertLess(len(peers), n, "every delivery opened a new connection: %r" % peers)

    def test_receiver_closing_connections_is_not_a_failure(self):
        # The receiver closes every connection after answering (without `Connection: close`):
        # reusing a pooled connection must not turn into failed attempts.
        self.receiver.on(self.path(), close=True)
        ids = [self.create(timeout=200 + (i % 5) * 5, retry={"attempts": 1}) for i in range(30)]
        for tid in ids:
            wait_until(lambda: self.c.state(tid) in ("succeeded", "failed"), 20)
            t = self.c.timer(tid)
            self.assertEqual(t["state"], "succeeded", t)
        self.assertEqual(len(self.receiver.for_path(self.path())), 30)

    def test_unusual_but_valid_answers(self):
        cases = {"nolen": (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until close", "succeeded"),
                 "http10": (b"HTTP/1.0 204 No Content\r\n\r\n", "succeeded"),
                 "garbage": (b"NOT HTTP AT ALL\r\n\r\n", "failed")}
        ids = {}
        for name, (raw, _) in cases.items():
            self.receiver.on(self.path(name), raw=raw)
            ids[name] = self.create(timeout=10, name=name,
                                    retry={"attempts": 2, "backoff_ms": 20, "max_backoff_ms": 20})
        for name, (_, state) in cases.items():
            t = self.wait_state(ids[name], state)
            if state == "failed":
                # Not an HTTP answer: a retryable failure, so both attempts were made.
                self.assertEqual(t["attempts"], 2, t)
                self.assertTrue(t["last_error"])

    # ---------------------------------------------------------------- retries

    def test_retries_then_success(self):
        self.receiver.on(self.path(), statuses=[503, 503, 200])
        tid = self.create(timeout=10, data="r",
                          retry={"attempts": 5, "backoff_ms": 200, "max_backoff_ms": 1000})
        got = self.receiver.wait_timer(tid, count=3, timeout=20)
        t = self.wait_state(tid, "succeeded")
        self.assertEqual(t["attempts"], 3)
        self.assertEqual([r.attempt for r in got], [1, 2, 3])
        self.assertEqual({r.header("idempotency-key") for r in got}, {tid})
        self.assertEqual({r.body for r in got}, {b"r"})
        # Equal jitter: the delay before attempt n+1 is at least d/2, d = backoff * 2^(n-1).
        self.assertGreaterEqual(got[1].time - got[0].time, 0.1 * 0.95)
        self.assertGreaterEqual(got[2].time - got[1].time, 0.2 * 0.95)
        time.sleep(0.5)
        self.assertEqual(len(self.receiver.for_timer(tid)), 3)

    def test_backoff_with_jitter_bounds(self):
        # Delays before attempts 2..5 are at least d/2 with d = 300, 600, 800, 800 (max 800).
        # Only the lower bound is timed (a loaded machine makes retries later, never sooner);
        # a schedule that is far too late fails the 30 s wait for all five attempts.
        self.receiver.on(self.path(), statuses=[500])
        tid = self.create(timeout=10, retry={"attempts": 5, "backoff_ms": 300, "max_backoff_ms": 800})
        got = self.receiver.wait_timer(tid, count=5, timeout=30)
        self.wait_state(tid, "failed")
        for i, d in enumerate((0.3, 0.6, 0.8, 0.8)):
            gap = got[i + 1].time - got[i].time
            self.assertGreaterEqual(gap, d / 2 * 0.95, "retry %d came too soon: %.3f s" % (i + 2, gap))

    def test_408_429_and_connection_errors_are_retried(self):
        self.receiver.on(self.path(), statuses=[408, 429, 200])
        tid = self.create(timeout=10, retry={"attempts": 4, "backoff_ms": 50, "max_backoff_ms": 100})
        t = self.wait_state(tid, "succeeded")
        self.assertEqual(t["attempts"], 3)
        # Nobody listens on port 9 (discard) of localhost: connection refused, retried.
        tid = self.create(uri="http://127.0.0.1:9/refused", timeout=10,
                          retry={"attempts": 3, "backoff_ms": 50, "max_backoff_ms": 100})
        t = self.wait_state(tid, "failed")
        self.assertEqual(t["attempts"], 3)
        self.assertTrue(t["last_error"])

    def test_retries_exhausted_is_failed_dead_letter(self):
        self.receiver.on(self.path(), statuses=[500])
        tid = self.create(timeout=10, retry={"attempts": 3, "backoff_ms": 50, "max_backoff_ms": 200})
        got = self.receiver.wait_timer(tid, count=3, timeout=20)
        t = self.wait_state(tid, "failed")
        self.assertEqual(t["attempts"], 3)
        self.assertTrue(t["last_error"])
        self.assertIn("500", t["last_error"])
        self.assertEqual([r.attempt for r in got], [1, 2, 3])
        time.sleep(0.5)
        self.assertEqual(len(self.receiver.for_timer(tid)), 3, "attempted beyond its policy")
        # It is listed among the dead letters.
        found, cursor = False, None
        for _ in range(100):
            q = "/timer?state=failed&limit=50" + ("&cursor=" + cursor if cursor else "")
            page = self.c.get(q).json()
            found = found or any(x["id"] == tid for x in page["timers"])
            cursor = page["next_cursor"]
            if found or cursor is None:
                break
        self.assertTrue(found, "failed timer not listed in ?state=failed")
        # A dead letter cannot be cancelled (it is complete).
        self.assertError(self.c.delete("/timer/" + tid), 404)

    def test_permanent_failure_is_not_retried(self):
        for status in (404, 400, 302):
            with self.subTest(status=status):
                name = "perm-%d" % status
                self.receiver.on(self.path(name), statuses=[status],
                                 headers={"Location": self.hook("redirected")})
                tid = self.create(timeout=10, name=name,
                                  retry={"attempts": 5, "backoff_ms": 50, "max_backoff_ms": 100})
                t = self.wait_state(tid, "failed")
                self.assertEqual(t["attempts"], 1)
                self.assertIn(str(status), t["last_error"])
                time.sleep(0.4)  # well past any retry delay
                self.assertEqual(len(self.receiver.for_timer(tid)), 1)
        self.assertEqual(self.receiver.for_path(self.path("redirected")), [],
                         "a redirect was followed")

    # ---------------------------------------------------------------- in flight

    def test_delete_and_put_while_in_flight_are_409(self):
        gate = threading.Event()
        self.receiver.on(self.path(), gate=gate)
        tid = self.create(timeout=10, data="slow")
        self.receiver.wait_timer(tid)
        try:
            self.assertEqual(self.c.state(tid), "executing")
            listed = self.c.get("/timer?state=executing&limit=1000").json()["timers"]
            self.assertIn(tid, [t["id"] for t in listed])
            self.assertError(self.c.delete("/timer/" + tid), 409)
            self.assertError(self.c.put("/timer/" + tid, timer_body(self.hook("other"), timeout=10)), 409)
            self.assertEqual(self.c.state(tid), "executing")
        finally:
            gate.set()
        self.wait_state(tid, "succeeded")
        self.assertError(self.c.delete("/timer/" + tid), 404)
        self.assertEqual(self.receiver.for_path(self.path("other")), [])

    def test_delete_after_failed_attempt_cancels_retries(self):
        # The retry is at least 3 s away (backoff 6 s, jitter down to half), so the DELETE
        # does not race it; then the test waits past the retry time the node reported.
        gate = threading.Event()
        self.receiver.on(self.path(), statuses=[503], gate=gate)
        tid = self.create(timeout=10, retry={"attempts": 5, "backoff_ms": 6000,
                                             "max_backoff_ms": 6000})
        self.receiver.wait_timer(tid)
        self.assertError(self.c.delete("/timer/" + tid), 409)
        gate.set()
        t = self.wait_state(tid, "retrying")
        self.assertEqual(t["attempts"], 1)
        self.assertIn("next_attempt", t)
        r = self.c.delete("/timer/" + tid)
        self.assertEqual(r.status, 202, r)
        self.assertEqual(self.c.state(tid), "cancelled")
        # Past the retry time (wall clock, as the node's), plus a poll of the receiver.
        wait_until(lambda: time.time() * 1000 > t["next_attempt"] + 500, 15, interval=0.1,
                   msg="past the retry time")
        self.assertEqual(len(self.receiver.for_timer(tid)), 1, "a cancelled retry was attempted")
        self.assertEqual(self.c.state(tid), "cancelled")


class RaceTest(SkyringTestCase):
    """PUT and DELETE racing with the timer firing: whatever the answer, the outcome matches
    it (SPEC section 2: never both old and new fire, never neither; 202 means no attempt
    starts after the response)."""

    def setUp(self):
        super().setUp()
        self.node = self.start_node()
        self.rec = self.start_receiver()
        self.rec.on("/slowish", delay=0.05)
        self.c = self.node.client()

    def race(self, n, action):
        ids = []
        for i in range(n):
            tid = "race-%s-%d" % (action, i)
            self.assertCreated(self.c.create(timer_body(self.rec.url("/slowish"), timeout=150 + 4 * i,
                                                        data="old"), timer_id=tid), tid)
            ids.append(tid)
        time.sleep(0.12)
        outcomes = {}
        for i, tid in enumerate(ids):  # sweeps across the due times
            if action == "put":
                r = self.c.put("/timer/" + tid, timer_body(self.rec.url("/new"), timeout=100,
                                                           data="new"))
            else:
                r = self.c.delete("/timer/" + tid)
            if r.status >= 400:
                self.assertError(r, r.status)
            outcomes[tid] = r.status
        for tid in ids:
            wait_until(lambda: self.c.state(tid) in ("succeeded", "cancelled", "failed"), 20,
                       msg="%s settled" % tid)
        time.sleep(0.5)
        return ids, outcomes

    def test_put_racing_with_delivery(self):
        ids, outcomes = self.race(60, "put")
        self.assertLessEqual(set(outcomes.values()), {200, 404, 409}, outcomes)
        for tid in ids:
            got = self.rec.for_timer(tid)
            paths = [r.path for r in got]
            if outcomes[tid] == 200:
                self.assertEqual(paths, ["/new"], "PUT answered 200 for %s" % tid)
                self.assertEqual(got[0].body, b"new")
            else:
                self.assertEqual(paths, ["/slowish"], "PUT answered %d for %s" % (outcomes[tid], tid))
                self.assertEqual(got[0].body, b"old")
        print("\n  PUT race outcomes: %r" % collections.Counter(outcomes.values()))

    def test_delete_racing_with_delivery(self):
        ids, outcomes = self.race(60, "delete")
        self.assertLessEqual(set(outcomes.values()), {202, 404, 409}, outcomes)
        for tid in ids:
            got = self.rec.for_timer(tid)
            if outcomes[tid] == 202:
                self.assertEqual(got, [], "DELETE answered 202 but %s was delivered" % tid)
                self.assertEqual(self.c.state(tid), "cancelled")
            else:
                self.assertEqual(len(got), 1, "DELETE answered %d for %s" % (outcomes[tid], tid))
                self.assertEqual(self.c.state(tid), "succeeded")
        print("\n  DELETE race outcomes: %r" % collections.Counter(outcomes.values()))


class SlowDestinationTest(SkyringTestCase):

    def test_never_answering_destination_times_out(self):
        node = self.start_node(["--delivery-timeout", "500ms"])
        slow = self.start_receiver()
        healthy = self.start_receiver()
        slow.on("/hang", hang=True)
        c = node.client()
        sent = time.time()
        stuck = self.assertCreated(c.create(timer_body(slow.url("/hang"), timeout=10,
                                                       retry={"attempts": 1})))
        slow.wait_timer(stuck)
        ok = self.assertCreated(c.create(timer_body(healthy.url("/ok"), timeout=10, data="fine")))
        healthy.wait_timer(ok, timeout=10)
        wait_until(lambda: c.state(stuck) == "failed", 15, msg="stuck timer failed")
        t = c.timer(stuck)
        self.assertEqual(t["attempts"], 1)
        self.assertRegex(t["last_error"].lower(), r"time|timed out|timeout", t)
        # The attempt was cut at the delivery timeout, not the 10 s default: with the default
        # it could not have completed sooner than 10 s after `sent` (the attempt started
        # later), however fast or slow the machine is.
        self.assertLess(t["completed"] / 1000 - sent, 10.0, t)
        self.assertEqual(len(slow.for_timer(stuck)), 1)
        self.assertEqual(c.state(ok), "succeeded")

    def test_slow_destination_does_not_block_others(self):
        # Ten held deliveries (more than the per-destination limit of 2, so some wait in
        # line) do not delay a timer for another destination: it is delivered while all of
        # them are still held. No timing involved: the slow receiver answers only afterwards.
        node = self.start_node(["--delivery-timeout", "60s", "--max-inflight-per-destination", "2"])
        slow = self.start_receiver()
        healthy = self.start_receiver()
        gate = threading.Event()
        slow.on("/slow", gate=gate)
        c = node.client()
        slow_ids = [self.assertCreated(c.create(timer_body(slow.url("/slow"), timeout=10,
                                                           retry={"attempts": 1})))
                    for _ in range(10)]
        try:
            slow.wait_path("/slow", count=2)
            ok = self.assertCreated(c.create(timer_body(healthy.url("/ok"), timeout=10)))
            healthy.wait_timer(ok, timeout=10)
            self.assertEqual(len(slow.for_path("/slow")), 2, "per-destination limit not kept")
            states = {t: c.state(t) for t in slow_ids}
            executing = [t for t, st in states.items() if st == "executing"]
            waiting = [t for t, st in states.items() if st != "executing"]
            self.assertEqual(len(executing), 2, states)
            self.assertEqual({states[t] for t in waiting}, {"pending"}, states)
            # Timers waiting in line behind the limit can still be cancelled and replaced.
            cancelled, moved = waiting[0], waiting[1]
            self.assertEqual(c.delete("/timer/" + cancelled).status, 202)
            r = c.put("/timer/" + moved, timer_body(healthy.url("/moved"), timeout=10))
            self.assertEqual(r.status, 200, r)
            healthy.wait_timer(moved, timeout=10)
        finally:
            gate.set()
        rest = [t for t in slow_ids if t not in (cancelled, moved)]
        for t in rest:
            wait_until(lambda: c.state(t) == "succeeded", 20, msg="held timer %s delivered" % t)
        time.sleep(0.3)
        self.assertEqual(sorted(r.timer_id for r in slow.for_path("/slow")), sorted(rest))
        self.assertEqual(c.state(cancelled), "cancelled")
        self.assertEqual(c.state(moved), "succeeded")
        self.assertEqual([r.path for r in healthy.for_timer(moved)], ["/moved"])


if __name__ == "__main__":
    unittest.main()
