"""Hostile and broken HTTP input (SPEC section 2, Errors): nothing a client sends may crash a
node, hang a connection or corrupt stored timers. After every case the node still answers
/ping and a normal create works (assertAlive)."""

import http.client
import json
import os
import socket
import threading
import time
import unittest

from harness import (Client, Node, Response, SkyringTestCase, parse_status, raw_exchange,
                     send_while_reading, split_response, timer_body, wait_until)

MiB = 1024 * 1024
CB = {"transport": "http", "method": "post", "uri": "http://127.0.0.1:9/never"}


def http_request(method, target, body=b"", headers=None, close=True):
    h = {"Host": "127.0.0.1"}
    h.update(headers or {})
    if body or method in ("POST", "PUT"):
        h.setdefault("Content-Length", str(len(body)))
    if close:
        h.setdefault("Connection", "close")
    head = "%s %s HTTP/1.1\r\n" % (method, target)
    head += "".join("%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
    return head.encode("latin-1") + body


def ping_on(sock):
    """Sends GET /ping on a raw keep-alive socket and returns the HTTP status of the answer."""
    sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    out = b""
    for _ in range(100):
        chunk = sock.recv(4096)
        out += chunk
        if not chunk or out.endswith(b"pong"):
            break
    return parse_status(out), out


def parse_responses(raw):
    """Splits a stream of HTTP/1.1 responses (Content-Length framed) into a list of
    (status, headers, body)."""
    out = []
    for _ in range(1000):
        if not raw:
            break
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            break
        status, headers, _ = split_response(head + b"\r\n\r\n")
        n = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:n]))
        raw = rest[n:]
    return out


class BadInputTest(SkyringTestCase):

    @classmethod
    def setUpClass(cls):
        cls.node = Node()

    @classmethod
    def tearDownClass(cls):
        cls.node.close()

    def tearDown(self):
        self.assertAlive(self.node)

    def assertRawError(self, raw, status):
        st, headers, body = split_response(raw)
        self.assertEqual(st, status, raw[:500])
        self.assertError(Response(st, "", headers, body), status)

    # ---------------------------------------------------------------- request line / headers

    def test_malformed_request_lines(self):
        cases = [b"GARBAGE\r\n\r\n",
                 b"GET /ping\r\n\r\n",
                 b"GET /ping HTTP/9.9\r\n\r\n",
                 b"GET  HTTP/1.1\r\n\r\n",
                 b"G@T /ping HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"GET /pi\x00ng HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"GET /ping HTTP/1.1\r\nHost x\r\n\r\n",  # header without colon
                 b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello
                 b"POST /timer HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                 b"POST /timer HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                 b"POST /timer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]
        for raw in cases:
            with self.subTest(raw=raw[:40]):
                out = raw_exchange(self.node.port, raw, timeout=10)
                # Either a 400 with the usual error shape, then close; or just a close.
                if out:
                    self.assertRawError(out, 400)
                    self.assertIn(b"connection: close", out.lower())

    def test_random_binary_garbage(self):
        for seed in range(5):
            data = os.urandom(4096 * (seed + 1))
            out = raw_exchange(self.node.port, data, timeout=10)
            if out:
                self.assertEqual(parse_status(out), 400, out[:200])

    def test_truncated_requests_then_close(self):
        cases = [b"POST /timer HTTP/1.1\r\nHost: x\r\nContent-Le",
                 b"POST /timer HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"timeout\": 10",
                 b"POST /timer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"ti",
                 b"GET /pi"]
        for i, raw in enumerate(cases):
            with self.subTest(i=i):
                s = socket.create_connection(("127.0.0.1", self.node.port), timeout=5)
                s.sendall(raw.replace(b"Host: x", b"Host: x\r\nx-timer-id: trunc-%d" % i))
                s.close()
        c = Client(self.node.port)
        try:
            wait_until(lambda: c.get("/ping").status == 200, 5)
            for i in range(len(cases)):
                self.assertEqual(c.get("/timer/trunc-%d" % i).status, 404, "truncated request created")
        finally:
            c.close()

    def test_half_closed_request_still_answered(self):
        # A complete request followed by shutdown(SHUT_WR) is still answered.
        s = socket.create_connection(("127.0.0.1", self.node.port), timeout=10)
        try:
            s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            out = b""
            for _ in range(100):
                chunk = s.recv(4096)
                if not chunk:
                    break
                out += chunk
        finally:
            s.close()
        self.assertEqual(parse_status(out), 200, out)
        self.assertTrue(out.endswith(b"pong"), out)

    def test_oversized_headers_are_431(self):
        big_value = http_request("GET", "/ping", headers={"X-Big": "a" * 9000})
        many = http_request("GET", "/ping", headers={"X-H%d" % i: "v" * 60 for i in range(200)})
        long_target = http_request("GET", "/timer/" + "a" * 9000)
        for raw in (big_value, many, long_target):
            with self.subTest(n=len(raw)):
                self.assertRawError(raw_exchange(self.node.port, raw, timeout=10), 431)
        # Just under the limit is fine.
        ok = raw_exchange(self.node.port, http_request("GET", "/ping", headers={"X-Big": "a" * 7000}))
        self.assertEqual(parse_status(ok), 200, ok[:200])

    def test_header_limit_through_http_client(self):
        c = Client(self.node.port)
        try:
            r = c.get("/ping", headers={"X-Big": "b" * 10000})
            self.assertError(r, 431)
        finally:
            c.close()

    # ---------------------------------------------------------------- bodies

    def test_body_over_1_mib_with_content_length_is_413(self):
        n = 2 * MiB
        head = http_request("POST", "/timer", headers={"Content-Length": str(n),
                                                       "x-timer-id": "big-cl"})
        raw, _ = send_while_reading(self.node.port, head, [b"x" * (256 * 1024)] * 8)
        self.assertRawError(raw, 413)
        self.assertEqual(_status(self.node, "/timer/big-cl"), 404)

    def test_body_over_1_mib_chunked_is_413(self):
        head = (b"POST /timer HTTP/1.1\r\nHost: x\r\nx-timer-id: big-chunked\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 40 + [b"0\r\n\r\n"]  # 2.5 MiB
        raw, _ = send_while_reading(self.node.port, head, chunks)
        self.assertRawError(raw, 413)
        self.assertEqual(_status(self.node, "/timer/big-chunked"), 404)

    def test_body_of_exactly_1_mib_is_accepted(self):
        body = {"timeout": 3600_000, "callback": CB, "data": ""}
        body["data"] = "y" * (MiB - len(json.dumps(body)))
        raw = json.dumps(body).encode()
        self.assertEqual(len(raw), MiB)
        c = Client(self.node.port)
        try:
            r = c.post("/timer", raw)
            tid = self.assertCreated(r)
            t = c.timer(tid)
            self.assertEqual(len(t["data"]), len(body["data"]))
            self.assertEqual(c.delete("/timer/" + tid).status, 202)
            # Chunked bodies are accepted too.
            small = json.dumps({"timeout": 3600_000, "callback": CB, "data": "chunked"}).encode()
            out = raw_exchange(self.node.port,
                               b"POST /timer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                               % (len(small), small))
            self.assertEqual(parse_status(out), 201, out)
        finally:
            c.close()

    def test_body_over_1_mib_sent_whole_by_http_client_gets_413(self):
        # A client that sends its whole body before reading the answer (Python http.client,
        # Java HttpURLConnection, ...) still sees the 413: after answering, the node shuts
        # down its sending side and reads and drops the rest of the body (bounded in bytes and
        # time) before closing, so the kernel does not reset the connection with unread data
        # (RFC 9112 section 9.6, staged close).
        c = http.client.HTTPConnection("127.0.0.1", self.node.port, timeout=15)
        try:
            try:
                # 8 MiB: larger than what loopback socket buffers absorb, so the client is
                # still sending when the node closes (with 2 MiB it is a race).
                c.request("POST", "/timer", body=b"x" * (8 * MiB),
                          headers={"Content-Type": "application/json"})
                r = c.getresponse()
                status = r.status
                reason = r.getheader("x-skyring-reason")
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected) as e:
                status, reason = repr(e), None
        finally:
            c.close()
        self.assertEqual(status, 413, "over-limit body: the client never sees the 413")
        self.assertTrue(reason)

    def test_invalid_utf8_in_json_string_is_400(self):
        c = Client(self.node.port)
        try:
            for bad in (b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"abc\xc3"):
                with self.subTest(bad=bad):
                    body = (b'{"timeout":3600000,"data":"' + bad + b'","callback":'
                            + json.dumps(CB).encode() + b"}")
                    self.assertError(c.post("/timer", body, headers={"x-timer-id": "utf8-bad"}), 400)
                    self.assertEqual(c.get("/timer/utf8-bad").status, 404)
            # Invalid UTF-8 in the callback header value and uri too.
            body = (b'{"timeout":3600000,"callback":{"transport":"http","method":"post",'
                    b'"uri":"http://127.0.0.1:9/\xff","headers":{"X-A":"\xfe"}}}')
            self.assertError(c.post("/timer", body), 400)
        finally:
            c.close()

    def test_deeply_nested_json_is_400(self):
        c = Client(self.node.port)
        try:
            n = 10000
            deep_data = ('{"timeout":3600000,"callback":%s,"data":' % json.dumps(CB)
                         + '{"a":' * n + "1" + "}" * n + "}")
            self.assertError(c.post("/timer", deep_data), 400)
            self.assertError(c.post("/timer", "[" * n + "]" * n), 400)
            self.assertError(c.post("/timer", '{"a":' * n + "1" + "}" * n), 400)
            # Unterminated deep nesting.
            self.assertError(c.post("/timer", "[" * 100000), 400)
            # Moderate nesting in data is fine.
            ok = {"timeout": 3600_000, "callback": CB, "data": {"a": {"b": {"c": {"d": [1, [2, [3]]]}}}}}
            tid = self.assertCreated(c.post("/timer", ok))
            self.assertEqual(c.timer(tid)["data"], ok["data"])
            self.assertEqual(c.delete("/timer/" + tid).status, 202)
        finally:
            c.close()

    def test_odd_json_values_are_400(self):
        c = Client(self.node.port)
        try:
            for body in ('{"timeout":1e400,"callback":%s}' % json.dumps(CB),
                         '{"timeout":NaN,"callback":%s}' % json.dumps(CB),
                         '{"timeout":10,"callback":%s,}' % json.dumps(CB),
                         '{"timeout":10 /* c */,"callback":%s}' % json.dumps(CB),
                         "\x00" * 100,
                         '{"timeout":"\\ud800","callback":%s}' % json.dumps(CB)):
                with self.subTest(body=body[:40]):
                    self.assertError(c.post("/timer", body), 400)
        finally:
            c.close()

    def test_expect_100_continue(self):
        body = json.dumps({"timeout": 3600_000, "callback": CB}).encode()
        s = socket.create_connection(("127.0.0.1", self.node.port), timeout=10)
        try:
            s.sendall(b"POST /timer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body))
            first = s.recv(4096)
            self.assertEqual(parse_status(first), 100, first)
            s.sendall(body)
            out = b""
            for _ in range(100):
                out += s.recv(4096)
                if b"}" in out:
                    break
            self.assertEqual(parse_status(out), 201, out)
        finally:
            s.close()

    # ---------------------------------------------------------------- connections

    def test_many_connections_at_once(self):
        socks = []
        try:
            for _ in range(200):
                socks.append(socket.create_connection(("127.0.0.1", self.node.port), timeout=20))
            for s in socks:
                status, out = ping_on(s)
                self.assertEqual(status, 200, out)
        finally:
            for s in socks:
                s.close()
        # Open and abandon 200 more without sending anything.
        more = [socket.create_connection(("127.0.0.1", self.node.port), timeout=20)
                for _ in range(200)]
        for s in more:
            s.close()
        # Reset connections (SO_LINGER 0) mid-request.
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", self.node.port), timeout=20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.sendall(b"POST /timer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            s.close()

    def test_concurrent_clients_many_requests(self):
        errors = []

        def worker(k):
            c = Client(self.node.port)
            try:
                for i in range(25):
                    r = c.create(timer_body("http://127.0.0.1:9/x", timeout=3600_000, data=str(i)),
                                 timer_id="conc-%d-%d" % (k, i))
                    if r.status != 201:
                        errors.append(r)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
            finally:
                c.close()

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        c = Client(self.node.port)
        try:
            for k in range(8):
                for i in (0, 24):
                    self.assertEqual(c.timer("conc-%d-%d" % (k, i))["data"], str(i))
        finally:
            c.close()

    def test_pipelined_requests(self):
        body = json.dumps({"timeout": 3600_000, "callback": CB, "data": "piped"}).encode()
        reqs = (http_request("POST", "/timer", body, {"x-timer-id": "pipe-1"}, close=False)
                + http_request("GET", "/ping", close=False)
                + http_request("GET", "/timer/pipe-1", close=False)
                + http_request("GET", "/nope", close=False)
                + http_request("POST", "/timer", b"{bad", close=False)
                + http_request("DELETE", "/timer/pipe-1", close=False)
                + http_request("GET", "/timer/pipe-1", close=True))
        out = raw_exchange(self.node.port, reqs, timeout=15)
        resps = parse_responses(out)
        self.assertEqual([r[0] for r in resps], [201, 200, 200, 404, 400, 202, 200], out)
        self.assertEqual(resps[1][2], b"pong")
        self.assertEqual(json.loads(resps[2][2])["data"], "piped")
        self.assertEqual(json.loads(resps[6][2])["state"], "cancelled")

    def test_client_that_never_reads_does_not_block_others(self):
        s = socket.create_connection(("127.0.0.1", self.node.port), timeout=10)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 3000
            sent, deadline = 0, time.monotonic() + 5
            while sent < len(req) and time.monotonic() < deadline:
                try:
                    sent += s.send(req[sent:])
                except BlockingIOError:
                    time.sleep(0.01)
            c = Client(self.node.port, timeout=10)
            try:
                for _ in range(10):
                    self.assertEqual(c.get("/ping").status, 200)
                self.assertCreated(c.create(timer_body("http://127.0.0.1:9/x", timeout=3600_000)))
            finally:
                c.close()
        finally:
            s.close()

    def test_pipelined_burst(self):
        n = 100
        reqs = b"".join(http_request("GET", "/ping", close=(i == n - 1)) for i in range(n))
        out = raw_exchange(self.node.port, reqs, timeout=20)
        resps = parse_responses(out)
        self.assertEqual(len(resps), n)
        self.assertEqual({r[0] for r in resps}, {200})


class IdleTimeoutTest(SkyringTestCase):

    def test_stalled_client_is_closed_and_others_are_served(self):
        node = self.start_node(["--idle-timeout", "1s"])
        stalled = []
        try:
            for raw in (b"POST /timer HTTP/1.1\r\nHost: x\r\nContent-Le",  # half the headers
                        b"POST /timer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"tim",
                        b""):  # nothing at all
                # Taken before connecting: the node's idle clock starts after this instant.
                opened = time.monotonic()
                s = socket.create_connection(("127.0.0.1", node.port), timeout=20)
                if raw:
                    s.sendall(raw)
                stalled.append((s, opened))
            # Meanwhile the node keeps serving others.
            c = node.client()
            for i in range(20):
                self.assertEqual(c.get("/ping").status, 200)
            self.assertCreated(c.create(timer_body("http://127.0.0.1:9/x", timeout=3600_000)))
            # Each stalled connection is closed by the node after the idle timeout.
            for s, opened in stalled:
                s.settimeout(30)
                try:
                    data = s.recv(4096)
                except ConnectionResetError:
                    data = b""
                except socket.timeout:
                    self.fail("stalled connection kept open (idle timeout 1 s)")
                waited = time.monotonic() - opened
                # Closed without a response (or with a 408/400). One-sided: never before the
                # idle timeout (0.9: float rounding of the two clocks' readings).
                self.assertTrue(data == b"" or parse_status(data) in (400, 408), data)
                self.assertGreaterEqual(waited, 0.9, "closed before the idle timeout")
        finally:
            for s, _ in stalled:
                s.close()
        self.assertAlive(node)

    def test_idle_keepalive_connection_is_closed(self):
        node = self.start_node(["--idle-timeout", "1s"])
        s = socket.create_connection(("127.0.0.1", node.port), timeout=20)
        try:
            status, out = ping_on(s)
            self.assertEqual(status, 200, out)
            s.settimeout(30)
            try:
                rest = s.recv(4096)
            except ConnectionResetError:
                rest = b""
            except socket.timeout:
                self.fail("idle keep-alive connection kept open (idle timeout 1 s)")
            self.assertEqual(rest, b"")
        finally:
            s.close()
        # The keep-alive client reconnects transparently afterwards.
        c = node.client()
        self.assertEqual(c.get("/ping").status, 200)
        time.sleep(1.5)
        self.assertEqual(c.get("/ping").status, 200)
        self.assertAlive(node)

    def test_max_connections(self):
        node = self.start_node(["--max-connections", "5", "--idle-timeout", "30s"])
        socks = [socket.create_connection(("127.0.0.1", node.port), timeout=10) for _ in range(5)]
        try:
            # One answered request on each: all five sessions are registered (keep-alive).
            for s in socks:
                status, out = ping_on(s)
                self.assertEqual(status, 200, out)
            # Over the limit: the connection is closed at once (no crash, no hang).
            s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
            try:
                s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                data = s.recv(4096)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            finally:
                s.close()
            self.assertEqual(data, b"", "a connection over --max-connections was served")
        finally:
            for s in socks:
                s.close()
        # Once they are gone, new connections are served again.
        c = Client(node.port, timeout=10)
        wait_until(lambda: _ping_ok(c), 10, interval=0.1, msg="served after connections closed")
        c.close()
        self.assertAlive(node)


def _status(node, path):
    c = Client(node.port)
    try:
        return c.get(path).status
    finally:
        c.close()


def _ping_ok(c):
    try:
        return c.get("/ping").status == 200
    except (OSError, http.client.HTTPException):
        c.close()
        return False


if __name__ == "__main__":
    unittest.main()
