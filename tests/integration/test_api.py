"""HTTP API of one standalone node (SPEC section 2): every endpoint and status code."""

import datetime
import time
import unittest

from harness import (Client, Node, Receiver, Response, SharedNodeTestCase, SkyringTestCase, now_ms,
                     send_while_reading, split_response, timer_body, wait_until)

TEN_YEARS_MS = 315_576_000_000  # 10 x 365.25 days
FAR = 3600_000  # a timeout that never fires during a test


class ApiTest(SharedNodeTestCase):
    def hook(self, name):
        return self.receiver.url(self.path(name))

    # ---------------------------------------------------------------- create / get

    def test_create_returns_201_location_and_id(self):
        r = self.c.create(timer_body(self.hook("a"), timeout=FAR, data="x"))
        tid = self.assertCreated(r)
        self.assertTrue(tid)
        self.assertEqual(r.header("content-type").split(";")[0], "application/json")
        self.assertEqual(r.json(), {"id": tid})
        # Generated ids are unique.
        r2 = self.c.create(timer_body(self.hook("a"), timeout=FAR, data="x"))
        self.assertNotEqual(self.assertCreated(r2), tid)

    def test_get_returns_all_fields(self):
        before = now_ms()
        r = self.c.create(timer_body(self.hook("a"), timeout=FAR, data="hello", method="PUT",
                                     headers={"X-Custom": "v"}))
        after = now_ms()
        tid = self.assertCreated(r)
        g = self.c.get("/timer/" + tid)
        self.assertEqual(g.status, 200, g)
        t = g.json()
        for field in ("id", "state", "created", "due", "timeout", "attempts", "callback", "retry",
                      "data", "last_error"):
            self.assertIn(field, t)
        self.assertEqual(t["id"], tid)
        self.assertEqual(t["state"], "pending")
        self.assertTrue(before - 1 <= t["created"] <= after + 1, (before, t, after))
        self.assertEqual(t["timeout"], FAR)
        self.assertTrue(abs(t["due"] - (t["created"] + FAR)) <= 1, t)
        self.assertEqual(t["attempts"], 0)
        self.assertEqual(t["callback"]["transport"], "http")
        self.assertEqual(t["callback"]["method"].lower(), "put")
        self.assertEqual(t["callback"]["uri"], self.hook("a"))
        self.assertEqual(t["callback"]["headers"], {"X-Custom": "v"})
        self.assertEqual(t["retry"], {"attempts": 5, "backoff_ms": 1000, "max_backoff_ms": 60000})
        self.assertEqual(t["data"], "hello")
        self.assertIsNone(t["last_error"])

    def test_get_object_data_and_retry_policy(self):
        data = {"user": 42, "nested": {"list": [1, "two", None, True]}, "s": "\u00e9\u6f22"}
        r = self.c.create(timer_body(self.hook("a"), timeout=FAR, data=data,
                                     retry={"attempts": 3, "backoff_ms": 10, "max_backoff_ms": 40}))
        t = self.c.timer(self.assertCreated(r))
        self.assertEqual(t["data"], data)
        self.assertEqual(t["retry"], {"attempts": 3, "backoff_ms": 10, "max_backoff_ms": 40})
        # No data -> null.
        r = self.c.create(timer_body(self.hook("a"), timeout=FAR))
        self.assertIsNone(self.c.timer(self.assertCreated(r))["data"])

    def test_get_unknown_id_is_404(self):
        for tid in ("does-not-exist", "x" * 128):
            self.assertError(self.c.get("/timer/" + tid), 404)

    def test_client_chosen_id(self):
        for tid in ("api-chosen-1", "A.b_c:d-9", "z" * 128, "1"):
            r = self.c.create(timer_body(self.hook("a"), timeout=FAR), timer_id=tid)
            self.assertCreated(r, tid)
            self.assertEqual(r.json(), {"id": tid})
            self.assertEqual(self.c.timer(tid)["id"], tid)

    def test_invalid_timer_id_is_400(self):
        for tid in ("has space", "slash/id", "semi;colon", "q?x", "x" * 129, "star*", "pct%41"):
            r = self.c.create(timer_body(self.hook("a"), timeout=FAR), timer_id=tid)
            self.assertError(r, 400, "x-timer-id")
        # Nothing was created under the valid prefix of a too-long id.
        self.assertError(self.c.get("/timer/" + "x" * 128), 404)

    def test_idempotent_create_same_body(self):
        tid = "api-idem-same"
        body = timer_body(self.hook("a"), timeout=300, data="once")
        first = self.c.create(body, timer_id=tid)
        self.assertCreated(first, tid)
        again = self.c.create(body, timer_id=tid)
        self.assertCreated(again, tid)
        self.assertEqual(again.json(), first.json())
        got = self.receiver.wait_timer(tid)
        wait_until(lambda: self.c.state(tid) == "succeeded", msg="state succeeded")
        # After completion (within retention) the same create is still the original 201 ...
        third = self.c.create(body, timer_id=tid)
        self.assertCreated(third, tid)
        self.assertEqual(self.c.state(tid), "succeeded")
        # ... and nothing is delivered a second time.
        time.sleep(1.0)
        self.assertEqual(len(self.receiver.for_timer(tid)), 1, self.receiver.for_timer(tid))
        self.assertEqual(got[0].body, b"once")

    def test_idempotent_create_different_body_is_409(self):
        tid = "api-idem-diff"
        self.assertCreated(self.c.create(timer_body(self.hook("a"), timeout=FAR, data="one"),
                                         timer_id=tid), tid)
        r = self.c.create(timer_body(self.hook("a"), timeout=FAR, data="two"), timer_id=tid)
        self.assertError(r, 409)
        self.assertEqual(self.c.timer(tid)["data"], "one")
        # Still 409 after the timer completed (retention window).
        tid2 = "api-idem-diff-done"
        self.assertCreated(self.c.create(timer_body(self.hook("b"), timeout=50, data="one"),
                                         timer_id=tid2), tid2)
        wait_until(lambda: self.c.state(tid2) == "succeeded", msg="delivered")
        r = self.c.create(timer_body(self.hook("b"), timeout=50, data="two"), timer_id=tid2)
        self.assertError(r, 409)
        time.sleep(0.5)
        self.assertEqual(len(self.receiver.for_timer(tid2)), 1)

    def test_at_epoch_ms(self):
        at = now_ms() + 700
        tid = self.assertCreated(self.c.create(timer_body(self.hook("a"), at=at, data="at")))
        t = self.c.timer(tid)
        self.assertEqual(t["due"], at)
        got = self.receiver.wait_timer(tid)[0]
        self.assertGreaterEqual(got.time * 1000, at, "delivered before its due time")
        self.assertEqual(got.body, b"at")

    def test_at_rfc3339(self):
        due = now_ms() + 800
        dt = datetime.datetime.fromtimestamp(due / 1000, tz=datetime.timezone.utc)
        z = dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (due % 1000)
        tid = self.assertCreated(self.c.create(timer_body(self.hook("z"), at=z)))
        self.assertEqual(self.c.timer(tid)["due"], due)
        # Same instant with a +02:00 offset, far in the future.
        far = now_ms() // 1000 * 1000 + 86400_000
        off = datetime.datetime.fromtimestamp(far / 1000, tz=datetime.timezone(
            datetime.timedelta(hours=2))).strftime("%Y-%m-%dT%H:%M:%S+02:00")
        tid2 = self.assertCreated(self.c.create(timer_body(self.hook("off"), at=off)))
        self.assertEqual(self.c.timer(tid2)["due"], far)
        got = self.receiver.wait_timer(tid)[0]
        self.assertGreaterEqual(got.time * 1000, due, "delivered before its due time")
        self.assertEqual(self.c.delete("/timer/" + tid2).status, 202)

    def test_at_in_the_past_is_delivered_at_once(self):
        tid = self.assertCreated(self.c.create(timer_body(self.hook("past"), at=now_ms() - 60_000,
                                                          data="late")))
        self.receiver.wait_timer(tid, timeout=10)
        wait_until(lambda: self.c.state(tid) == "succeeded")

    def test_ten_years_is_the_maximum(self):
        tid = self.assertCreated(self.c.create(timer_body(self.hook("a"), timeout=TEN_YEARS_MS)))
        self.assertEqual(self.c.timer(tid)["timeout"], TEN_YEARS_MS)
        self.assertError(self.c.create(timer_body(self.hook("a"), timeout=TEN_YEARS_MS + 1)),
                         400, "timeout")
        # Over 24.8 days works (the old Node.js limit).
        self.assertCreated(self.c.create(timer_body(self.hook("a"), timeout=30 * 86400_000)))

    # ---------------------------------------------------------------- replace

    def test_put_replaces_timer(self):
        # The old version is due far away, so the PUT never races its delivery (RaceTest in
        # test_delivery covers PUT against a firing timer).
        tid = "api-put-1"
        self.assertCreated(self.c.create(timer_body(self.hook("old"), timeout=FAR, data="old"),
                                         timer_id=tid), tid)
        sent = time.time()
        r = self.c.put("/timer/" + tid, timer_body(self.hook("new"), timeout=1000,
                                                   data={"v": "new"}))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), {"id": tid})
        t = self.c.timer(tid)
        self.assertEqual(t["data"], {"v": "new"})
        self.assertEqual(t["callback"]["uri"], self.hook("new"))
        self.assertEqual(t["state"], "pending")
        got = self.receiver.wait_path(self.path("new"))
        self.assertEqual(got[0].body, b'{"v":"new"}')
        # The countdown restarted at the PUT.
        self.assertGreaterEqual(got[0].time, sent + 1.0, "replaced timer fired early")
        wait_until(lambda: self.c.state(tid) == "succeeded")
        self.assertEqual(self.c.timer(tid)["callback"]["uri"], self.hook("new"))
        self.assertEqual(self.receiver.for_path(self.path("old")), [], "old timer fired too")
        self.assertEqual(len(self.receiver.for_timer(tid)), 1)

    def test_put_unknown_or_completed_is_404(self):
        self.assertError(self.c.put("/timer/api-put-nobody", timer_body(self.hook("a"), timeout=10)),
                         404)
        self.assertError(self.c.get("/timer/api-put-nobody"), 404)  # PUT did not create it
        tid = self.assertCreated(self.c.create(timer_body(self.hook("done"), timeout=10)))
        wait_until(lambda: self.c.state(tid) == "succeeded")
        self.assertError(self.c.put("/timer/" + tid, timer_body(self.hook("a"), timeout=10)), 404)

    def test_put_invalid_body_is_400_and_keeps_timer(self):
        tid = self.assertCreated(self.c.create(timer_body(self.hook("a"), timeout=FAR, data="keep")))
        self.assertError(self.c.put("/timer/" + tid, {"timeout": -1, "callback": {}}), 400)
        self.assertError(self.c.put("/timer/" + tid, "{nope"), 400)
        t = self.c.timer(tid)
        self.assertEqual((t["state"], t["data"]), ("pending", "keep"))

    # ---------------------------------------------------------------- cancel

    def test_delete_cancels(self):
        # Due far away: the DELETE never races the delivery (RaceTest in test_delivery covers
        # DELETE against a firing timer). The state proves the cancel; it is final.
        tid = "api-del-1"
        self.assertCreated(self.c.create(timer_body(self.hook("del"), timeout=FAR), timer_id=tid),
                           tid)
        r = self.c.delete("/timer/" + tid)
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.json(), {"id": tid})
        self.assertEqual(self.c.state(tid), "cancelled")
        self.assertError(self.c.delete("/timer/" + tid), 404)
        self.assertEqual(self.receiver.for_path(self.path("del")), [])
        self.assertEqual(self.c.state(tid), "cancelled")
        # Cancelled is final: PUT is 404 too.
        self.assertError(self.c.put("/timer/" + tid, timer_body(self.hook("del"), timeout=10)), 404)

    def test_delete_unknown_is_404(self):
        self.assertError(self.c.delete("/timer/api-del-nobody"), 404)

    # ---------------------------------------------------------------- listing

    def test_list_requires_valid_parameters(self):
        self.assertError(self.c.get("/timer"), 400, "state")
        self.assertError(self.c.get("/timer?state=sleeping"), 400, "state")
        for lim in ("0", "abc", "-1", "1001", ""):
            self.assertError(self.c.get("/timer?state=pending&limit=" + lim), 400, "limit")
        self.assertError(self.c.get("/timer?state=pending&cursor=%ZZ"), 400, "cursor")
        r = self.c.get("/timer?state=pending&limit=1000&cursor=zzzzzzzz")
        self.assertEqual(r.status, 200, r)

    # ---------------------------------------------------------------- operations

    def test_ping(self):
        r = self.c.get("/ping")
        self.assertEqual((r.status, r.body), (200, b"pong"))

    def test_health(self):
        r = self.c.get("/health")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["status"], "ok")

    def test_metrics(self):
        before = self.c.metrics()
        tid = self.assertCreated(self.c.create(timer_body(self.hook("m"), timeout=10)))
        self.receiver.wait_timer(tid)
        wait_until(lambda: self.c.state(tid) == "succeeded")
        r = self.c.get("/metrics")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.header("content-type").startswith("text/plain"), r)
        text = r.text
        for name in ("skyring_timers_created_total", "skyring_timers_delivered_total",
                     "skyring_timers_pending", "skyring_delivery_lateness_seconds",
                     "skyring_http_request_duration_seconds", "skyring_storage_commit_seconds"):
            self.assertIn("# TYPE " + name, text)
        for line in text.splitlines():
            if line and not line.startswith("#"):
                self.assertTrue(line.startswith("skyring_"), line)
        after = self.c.metrics()
        self.assertGreaterEqual(after["skyring_timers_created_total"],
                                before["skyring_timers_created_total"] + 1)
        self.assertGreaterEqual(after["skyring_timers_delivered_total"],
                                before["skyring_timers_delivered_total"] + 1)
        self.assertIn("skyring_delivery_lateness_seconds_count", after)
        self.assertGreaterEqual(after["skyring_delivery_lateness_seconds_count"], 1)
        self.assertIn('skyring_delivery_lateness_seconds_bucket{le="+Inf"}', after)

    def test_unknown_route_is_404(self):
        for path in ("/", "/nope", "/timers", "/timerx", "/ping/more", "/metrics/x"):
            self.assertError(self.c.get(path), 404)
        self.assertError(self.c.post("/nope", "{}"), 404)

    def test_wrong_method_is_405(self):
        cases = [("DELETE", "/timer"), ("PUT", "/timer"), ("PATCH", "/timer"),
                 ("POST", "/timer/some-id"), ("PATCH", "/timer/some-id"), ("POST", "/ping"),
                 ("DELETE", "/health"), ("POST", "/metrics")]
        for method, path in cases:
            r = self.c.request(method, path, body="{}" if method in ("POST", "PUT", "PATCH") else None)
            self.assertError(r, 405)
            self.assertTrue(r.header("allow"), r)

    # ---------------------------------------------------------------- validation

    def test_invalid_bodies_are_400_naming_the_field(self):
        u = self.hook("bad")
        cb = {"transport": "http", "method": "post", "uri": u}

        def with_cb(**kw):
            b = {"timeout": 1000, "callback": dict(cb)}
            b.update(kw)
            return b

        def cb_without(key, **over):
            c = {k: v for k, v in cb.items() if k != key}
            c.update(over)
            return {"timeout": 1000, "callback": c}

        cases = [
            ("missing timeout", {"callback": cb}, "timeout"),
            ("timeout string", with_cb(timeout="1000"), "timeout"),
            ("timeout zero", with_cb(timeout=0), "timeout"),
            ("timeout negative", with_cb(timeout=-5), "timeout"),
            ("timeout float", with_cb(timeout=1.5), "timeout"),
            ("timeout above 10 years", with_cb(timeout=TEN_YEARS_MS + 1), "timeout"),
            ("timeout null", with_cb(timeout=None), "timeout"),
            ("timeout bool", with_cb(timeout=True), "timeout"),
            ("timeout huge", with_cb(timeout=10 ** 30), "timeout"),
            ("both timeout and at", with_cb(at=now_ms() + 1000), "at"),
            ("at garbage", {"at": "tomorrow", "callback": cb}, "at"),
            ("at no zone", {"at": "2030-01-01T00:00:00", "callback": cb}, "at"),
            ("at bad date", {"at": "2030-02-31T00:00:00Z", "callback": cb}, "at"),
            ("at negative", {"at": -1, "callback": cb}, "at"),
            ("at float", {"at": now_ms() + 0.5, "callback": cb}, "at"),
            ("at above 10 years", {"at": now_ms() + TEN_YEARS_MS + 86400_000, "callback": cb}, "at"),
            ("missing callback", {"timeout": 1000}, "callback"),
            ("callback string", with_cb(callback="http://x"), "callback"),
            ("callback array", with_cb(callback=[cb]), "callback"),
            ("missing uri", cb_without("uri"), "uri"),
            ("uri number", cb_without("uri", uri=5), "uri"),
            ("uri empty", cb_without("uri", uri=""), "uri"),
            ("uri not a URL", cb_without("uri", uri="not a url"), "uri"),
            ("uri wrong scheme", cb_without("uri", uri="ftp://127.0.0.1/x"), "uri"),
            ("missing transport", cb_without("transport"), "transport"),
            ("unknown transport", cb_without("transport", transport="carrier-pigeon"), "transport"),
            ("transport number", cb_without("transport", transport=7), "transport"),
            ("missing method", cb_without("method"), "method"),
            ("method number", cb_without("method", method=1), "method"),
            ("method unknown", cb_without("method", method="fly"), "method"),
            ("data number", with_cb(data=5), "data"),
            ("data array", with_cb(data=[1, 2]), "data"),
            ("data null", with_cb(data=None), "data"),
            ("data bool", with_cb(data=False), "data"),
            ("retry attempts 0", with_cb(retry={"attempts": 0}), "retry.attempts"),
            ("retry attempts string", with_cb(retry={"attempts": "3"}), "retry.attempts"),
            ("retry not object", with_cb(retry=3), "retry"),
            ("retry backoff negative", with_cb(retry={"backoff_ms": -1}), "retry.backoff_ms"),
            ("headers number value", cb_without("headers", headers={"X-A": 5}), "headers"),
            ("headers null value", cb_without("headers", headers={"X-A": None}), "headers"),
            ("headers not object", cb_without("headers", headers="X-A: 1"), "headers"),
            ("headers CRLF injection", cb_without("headers", headers={"X-A": "a\r\nX-B: b"}),
             "headers"),
            ("headers NUL in value", cb_without("headers", headers={"X-Nul": "a\u0000b"}),
             "callback.headers.X-Nul"),
            ("headers control character in value",
             cb_without("headers", headers={"X-Esc": "\u001b[31m"}), "callback.headers.X-Esc"),
        ]
        for name, body, field in cases:
            with self.subTest(name):
                tid = "api-bad-%d" % cases.index((name, body, field))
                self.assertError(self.c.create(body, timer_id=tid), 400, field)
                self.assertError(self.c.get("/timer/" + tid), 404)  # nothing was created
        self.assertEqual(self.receiver.for_path(self.path("bad")), [])

    def test_malformed_bodies_are_400(self):
        cases = [("invalid JSON", "{\"timeout\": 10,", "JSON"),
                 ("not JSON at all", "hello", "JSON"),
                 ("empty body", "", None),
                 ("array body", "[]", "object"),
                 ("number body", "42", "object"),
                 ("string body", "\"timer\"", "object"),
                 ("null body", "null", "object"),
                 ("trailing garbage", "{\"timeout\":1} x", "JSON")]
        for name, body, word in cases:
            with self.subTest(name):
                self.assertError(self.c.post("/timer", body), 400, word)

    def test_every_error_has_reason_header_and_json_body(self):
        # assertError checks header + body; collect one of each status here.
        self.assertError(self.c.get("/timer/none-such"), 404)
        self.assertError(self.c.get("/bogus"), 404)
        self.assertError(self.c.post("/ping", ""), 405)
        self.assertError(self.c.post("/timer", "{}"), 400)
        tid = self.assertCreated(self.c.create(timer_body(self.hook("a"), timeout=FAR, data="1")))
        self.assertError(self.c.create(timer_body(self.hook("a"), timeout=FAR, data="2"),
                                       timer_id=tid), 409)
        # 413: the server may answer before the body is sent, so read while sending.
        n = 1024 * 1024 + 10
        raw, _ = send_while_reading(
            self.node.port, b"POST /timer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % n,
            [b"x" * n])
        status, headers, body = split_response(raw)
        self.assertError(Response(status, "", headers, body), 413)


class ListingTest(SkyringTestCase):
    """Listing on a dedicated node, so the expected sets are exact."""

    def test_list_by_state_with_paging(self):
        node = self.start_node()
        rec = self.start_receiver()
        c = node.client()
        rec.on("/gone", statuses=[404])
        pending = set()
        for i in range(7):
            pending.add(self.assertCreated(c.create(timer_body(rec.url("/later"), timeout=FAR,
                                                               data=str(i)))))
        failed = set()
        for i in range(5):
            failed.add(self.assertCreated(c.create(timer_body(rec.url("/gone"), timeout=10,
                                                              retry={"attempts": 1}))))
        succeeded = set()
        for i in range(3):
            succeeded.add(self.assertCreated(c.create(timer_body(rec.url("/ok"), timeout=10))))
        cancelled = self.assertCreated(c.create(timer_body(rec.url("/later"), timeout=FAR)))
        self.assertEqual(c.delete("/timer/" + cancelled).status, 202)
        wait_until(lambda: all(c.state(t) == "failed" for t in failed), msg="all failed")
        wait_until(lambda: all(c.state(t) == "succeeded" for t in succeeded), msg="all succeeded")

        def collect(state, limit):
            ids, pages, cursor = [], [], None
            for _ in range(50):  # bounded
                q = "/timer?state=%s&limit=%d" % (state, limit)
                if cursor is not None:
                    q += "&cursor=" + cursor
                r = c.get(q)
                self.assertEqual(r.status, 200, r)
                page = r.json()
                self.assertIn("timers", page)
                self.assertIn("next_cursor", page)
                self.assertLessEqual(len(page["timers"]), limit)
                for t in page["timers"]:
                    self.assertEqual(t["state"], state, t)
                ids += [t["id"] for t in page["timers"]]
                pages.append(len(page["timers"]))
                cursor = page["next_cursor"]
                if cursor is None:
                    return ids, pages
            self.fail("listing did not end")

        ids, pages = collect("pending", 3)
        self.assertEqual(len(ids), len(set(ids)), "an id listed twice: %r" % ids)
        self.assertEqual(set(ids), pending)
        self.assertGreaterEqual(len(pages), 3, pages)
        ids, pages = collect("failed", 2)
        self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(set(ids), failed)
        self.assertGreaterEqual(len(pages), 3, pages)
        ids, _ = collect("succeeded", 100)
        self.assertEqual(set(ids), succeeded)
        ids, _ = collect("cancelled", 1)
        self.assertEqual(ids, [cancelled])
        ids, _ = collect("retrying", 10)
        self.assertEqual(ids, [])
        # Failed entries carry the dead-letter details.
        r = c.get("/timer?state=failed&limit=1").json()
        t = r["timers"][0]
        self.assertEqual(t["attempts"], 1)
        self.assertTrue(t["last_error"])
        self.assertIsNotNone(r["next_cursor"])


if __name__ == "__main__":
    unittest.main()
