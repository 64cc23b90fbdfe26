"""Retention keeps pace with deliveries (issue 7, point 3): completed records leave within
retention + 10 s even when tens of thousands complete together, and the purge lag is in
/metrics. Also: a corrupt-free node reports /health "ok" with a quarantine count of 0."""

import json
import socket
import threading
import time
import unittest

from harness import SkyringTestCase, free_port, now_ms, timer_body, wait_until

RETENTION_S = 2
N = 40_000
PIPELINE = 100
CONNECTIONS = 32
DUE_AFTER_MS = 20_000


def parallel_creates(port, body, n):
    """n creates of `body` over CONNECTIONS connections (each answer waits for its fsync, so
    one connection alone is slow); returns the number of 201 answers."""
    counts = [0] * CONNECTIONS
    share = [n // CONNECTIONS + (1 if i < n % CONNECTIONS else 0) for i in range(CONNECTIONS)]

    def worker(i):
        counts[i] = pipelined_creates(port, [body] * share[i])
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return sum(counts)


def pipelined_creates(port, bodies, timeout=60.0):
    """Sends POST /timer requests pipelined in groups over one connection; returns the number
    of 201 answers. Bounded by the number of requests and the socket timeout."""
    created = 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rb")
        for start in range(0, len(bodies), PIPELINE):
            group = bodies[start:start + PIPELINE]
            out = bytearray()
            for body in group:
                out += (b"POST /timer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body)) + body
            s.sendall(out)
            for _ in group:
                status = f.readline()
                length = 0
                while True:
                    line = f.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                f.read(length)
                if status.split(b" ")[1:2] == [b"201"]:
                    created += 1
    return created


class RetentionTest(SkyringTestCase):

    def test_purge_keeps_pace_with_a_burst_of_completions(self):
        node = self.start_node(["--retention", "%ds" % RETENTION_S])
        c = node.client()
        dead = "http://127.0.0.1:%d/hook" % free_port()  # refused: fails at once
        # All due at one instant after the creates, so they complete (fail) together.
        due = now_ms() + DUE_AFTER_MS
        body = json.dumps(timer_body(dead, at=due, retry={"attempts": 1})).encode()
        self.assertEqual(parallel_creates(node.port, body, N), N)

        def failed():
            return c.metrics().get("skyring_timers_failed_total", 0) >= N
        wait_until(failed, timeout=120, interval=0.2, msg="all timers failed")
        completed_at = time.monotonic()
        listed = c.get("/timer?state=failed&limit=1")
        self.assertEqual(listed.status, 200, listed)
        sample = [t["id"] for t in listed.json()["timers"]]

        def purged():
            m = c.metrics()
            return m.get("skyring_timers_purged_total", 0) >= N and m
        m = wait_until(purged, timeout=RETENTION_S + 10, interval=0.2,
                       msg="every record purged within retention + 10 s")
        self.assertLessEqual(time.monotonic() - completed_at, RETENTION_S + 10)
        self.assertIn("skyring_retention_purge_lag_milliseconds", m)
        for tid in sample:
            self.assertEqual(c.get("/timer/" + tid).status, 404)
        r = c.get("/timer?state=failed&limit=10")
        self.assertEqual(r.json()["timers"], [])
        self.assertAlive(node)

    def test_health_reports_no_quarantine(self):
        node = self.start_node()
        r = node.client().get("/health")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["status"], "ok")
        self.assertEqual(r.json()["quarantined"], 0)


if __name__ == "__main__":
    unittest.main()
