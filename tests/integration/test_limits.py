"""Resource limits of one node: file descriptors and buffered request bodies.

* Out of descriptors the node sheds load calmly: client connections are capped below the
  descriptor limit (storage and outbound deliveries keep theirs), and when accept() fails for
  lack of descriptors the node pauses accepting instead of retrying in a hot loop, logs at most
  about once a second and counts the failures in /metrics.
* Request bodies are buffered within a node-wide byte budget (--max-body-buffer): beyond it a
  request is answered 503 with Retry-After.

CPU checks read the node's utime + stime from /proc/<pid>/stat over a window while the load is
held. The bound is generous (a quarter of one core) and one-sided: an idle node passes it on
any machine, a node that spins on accept() uses the whole window.
"""

import os
import resource
import socket
import time
import unittest

from harness import (Client, SkyringTestCase, parse_status, raw_exchange, split_response,
                     timer_body, wait_until)

CONNECTIONS = 600
FD_LIMIT = 256
CPU_WINDOW = 2.0
MAX_CPU_IN_WINDOW = 0.5  # seconds of CPU in CPU_WINDOW seconds of wall time


def cpu_seconds(pid):
    """utime + stime of a process in seconds (/proc/<pid>/stat fields 14 and 15)."""
    with open("/proc/%d/stat" % pid) as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def low_fd_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def accept_lines(node):
    with node._lines_lock:
        return [l for l in node.lines if "accept" in l]


class DescriptorLimitTest(SkyringTestCase):

    def open_many(self, port, n=CONNECTIONS):
        """n connections to the node (bounded; the caller closes them). Connections the node
        closed at once stay in the list: closing them again is harmless."""
        socks = []
        for _ in range(n):
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            except OSError:
                break  # backlog full or refused: enough pressure either way
        return socks

    def assert_calm(self, node, socks):
        """While socks are held: the node uses little CPU and logs few accept lines."""
        t0, cpu0 = time.monotonic(), cpu_seconds(node.proc.pid)
        time.sleep(CPU_WINDOW)
        t1, cpu1 = time.monotonic(), cpu_seconds(node.proc.pid)
        self.assertTrue(node.running(), node.log())
        used = cpu1 - cpu0
        self.assertLess(used, MAX_CPU_IN_WINDOW,
                        "node used %.2f s of CPU in %.1f s holding %d connections (spinning?)"
                        % (used, t1 - t0, len(socks)))

    def assert_few_accept_lines(self, node, seconds):
        lines = accept_lines(node)
        # At most one line a second (plus the first one and a margin for the window edges).
        self.assertLessEqual(len(lines), int(seconds) + 3,
                             "%d accept log lines in %.1f s: %r" % (len(lines), seconds,
                                                                    lines[:5]))

    def assert_serves_after_release(self, node):
        rec = self.start_receiver()
        c = Client(node.port, timeout=15)
        try:
            wait_until(lambda: _ping(c), 20, interval=0.05, msg="node answers /ping")
            tid = self.assertCreated(c.create(timer_body(rec.url("/after"), timeout=10,
                                                         data="x")))
            rec.wait_timer(tid)
            wait_until(lambda: c.state(tid) == "succeeded", msg="timer delivered")
            return c.metrics()
        finally:
            c.close()

    def test_low_descriptor_limit_caps_connections_calmly(self):
        # Started with 256 descriptors (soft = hard, so it cannot raise them): the node logs
        # the figure, warns that --max-connections does not fit, and caps client connections so
        # that 600 of them are closed at once instead of exhausting the descriptors.
        node = self.start_node(preexec_fn=low_fd_limit)
        started = time.monotonic()
        socks = self.open_many(node.port)
        try:
            self.assertGreater(len(socks), FD_LIMIT, "could not open enough connections")
            self.assert_calm(node, socks)
        finally:
            for s in socks:
                s.close()
        m = self.assert_serves_after_release(node)
        self.assert_few_accept_lines(node, time.monotonic() - started)
        self.assertGreater(m.get("skyring_http_connections_rejected_total", 0)
                           + m.get("skyring_http_accept_errors_total", 0), 0, m)
        with node._lines_lock:
            descriptor_lines = [l for l in node.lines if "descriptors" in l]
        self.assertTrue(any(str(FD_LIMIT) in l for l in descriptor_lines), node.log())

    def test_accept_pauses_when_descriptors_run_out(self):
        # The descriptor limit drops under a running node (prlimit), so accept() itself fails
        # with EMFILE: the node pauses accepting, counts and rate-limits, and recovers.
        node = self.start_node(["--storage", "memory"])
        self.assertEqual(node.client().get("/ping").status, 200)
        node._close_clients()
        pid = node.proc.pid
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        limit = open_fds(pid) + 16
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
        started = time.monotonic()
        socks = self.open_many(node.port)
        try:
            self.assertGreater(len(socks), 100, "could not open enough connections")
            self.assert_calm(node, socks)
        finally:
            for s in socks:
                s.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        m = self.assert_serves_after_release(node)
        self.assert_few_accept_lines(node, time.monotonic() - started)
        self.assertGreater(m.get("skyring_http_accept_errors_total", 0), 0, m)


def _ping(c):
    try:
        return c.get("/ping").status == 200
    except OSError:
        c.close()
        return False


class BodyBufferBudgetTest(SkyringTestCase):
    BUDGET = 3_000_000
    LENGTH = 900_000

    def head(self, length):
        return (b"POST /timer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % length)

    def padded_body(self, uri, length):
        # A valid timer body padded with JSON whitespace to exactly `length` bytes.
        import json
        b = json.dumps(timer_body(uri, timeout=3600_000)).encode()
        return b + b" " * (length - len(b))

    def test_bodies_over_the_budget_are_503_until_it_frees(self):
        node = self.start_node(["--max-body-buffer", str(self.BUDGET)])
        c = node.client()
        held = []
        try:
            # Three requests announce 900,000 bytes and send only part of them: 2.7 MB of the
            # 3 MB budget stay reserved while they are held.
            for _ in range(3):
                s = socket.create_connection(("127.0.0.1", node.port), timeout=20)
                s.sendall(self.head(self.LENGTH) + b"{" + b" " * 1000)
                held.append(s)
            wait_until(lambda: c.metrics().get("skyring_http_body_buffer_bytes", 0)
                       >= 3 * self.LENGTH, 15, msg="3 bodies reserved")
            # A fourth one does not fit: 503 with Retry-After and a reason, then close.
            body = self.padded_body("http://127.0.0.1:9/x", self.LENGTH)
            out = raw_exchange(node.port, self.head(self.LENGTH) + body, timeout=15)
            status, headers, resp = split_response(out)
            self.assertEqual(status, 503, out[:300])
            self.assertEqual(headers.get("retry-after"), "1", headers)
            self.assertIn("buffer", headers.get("x-skyring-reason", ""), headers)
            self.assertIn(b'"error"', resp)
            self.assertEqual(headers.get("connection"), "close", headers)
            # Small requests without a body are not affected.
            self.assertEqual(c.get("/ping").status, 200)
            m = c.metrics()
            self.assertGreaterEqual(m.get("skyring_http_body_budget_rejections_total", 0), 1, m)
        finally:
            for s in held:
                s.close()
        wait_until(lambda: c.metrics().get("skyring_http_body_buffer_bytes", -1) == 0, 15,
                   msg="reservations released")
        out = raw_exchange(node.port, self.head(self.LENGTH).replace(
            b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n")
            + self.padded_body("http://127.0.0.1:9/x", self.LENGTH), timeout=15)
        self.assertEqual(parse_status(out), 201, out[:300])
        self.assertAlive(node)


if __name__ == "__main__":
    unittest.main()
