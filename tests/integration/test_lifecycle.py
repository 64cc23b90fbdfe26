"""Configuration, signals, restarts and retention (SPEC sections 1, 3 and 6)."""

import collections
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from harness import (Client, Node, SkyringTestCase, free_port, now_ms, run_binary, skyring_bin,
                     timer_body, wait_until)


class ConfigTest(SkyringTestCase):

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="skyring-it-cfg-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def raw_node(self, args, env=None):
        return self.start_node(list(args), env=env, raw_args=True,
                               data_dir=os.path.join(self.tmp, "data"))

    def ports(self, n):
        # Distinct free ports (checked free just before use; the node binds them at once).
        out = set()
        for _ in range(100):
            out.add(free_port())
            if len(out) == n:
                return sorted(out)
        self.fail("no free ports")

    def test_precedence_flag_env_file_default(self):
        p_file, p_env, p_flag = self.ports(3)
        data = os.path.join(self.tmp, "data")
        cfg = self.write("skyring.toml", 'port = %d\nhost = "127.0.0.1"\ndata_dir = "%s"\n'
                                         'log-format = "json"\n' % (p_file, data))
        # File only.
        n = self.raw_node(["--config", cfg])
        self.assertEqual(n.port, p_file)
        self.assertEqual(n.client().get("/ping").status, 200)
        self.assertTrue(any(l.startswith("{") and "listening" in l for l in n.lines), n.log())
        for line in n.lines[1:]:
            json.loads(line)  # --log-format json from the file: one JSON object per line
        n.stop()
        self.assertTrue(os.path.isdir(data), "data_dir from the file was not used")
        # Env beats file.
        n = self.raw_node(["--config", cfg], env={"SKYRING_PORT": str(p_env),
                                                  "SKYRING_LOG_FORMAT": "text"})
        self.assertEqual(n.port, p_env)
        self.assertFalse(any(l.startswith("{") for l in n.lines[1:]), n.log())
        n.stop()
        # Flag beats env and file.
        n = self.raw_node(["--config", cfg, "--port", str(p_flag), "--log-format", "json"],
                          env={"SKYRING_PORT": str(p_env), "SKYRING_LOG_FORMAT": "text"})
        self.assertEqual(n.port, p_flag)
        self.assertTrue(all(l.startswith("{") for l in n.lines[1:] if l), n.log())
        n.stop()
        # The config file named by SKYRING_CONFIG.
        n = self.raw_node([], env={"SKYRING_CONFIG": cfg})
        self.assertEqual(n.port, p_file)
        n.stop()

    def test_env_only_and_default(self):
        p_env, = self.ports(1)
        n = self.raw_node([], env={"SKYRING_PORT": str(p_env), "SKYRING_HOST": "127.0.0.1",
                                   "SKYRING_DATA_DIR": os.path.join(self.tmp, "envdata"),
                                   "SKYRING_RETENTION": "3s"})
        self.assertEqual(n.port, p_env)
        self.assertTrue(os.path.isdir(os.path.join(self.tmp, "envdata")))
        n.stop()
        # Default data dir is ./skyring-data (relative to the working directory); port 0 so
        # the default port 3000 is not needed on this shared machine.
        cwd = os.path.join(self.tmp, "cwd")
        os.mkdir(cwd)
        n = self.start_node(["--port", "0", "--host", "127.0.0.1"], raw_args=True, cwd=cwd)
        self.assertEqual(n.client().get("/ping").status, 200)
        n.stop()
        self.assertTrue(os.path.isdir(os.path.join(cwd, "skyring-data")))

    def test_default_port_is_3000_when_free(self):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", 3000))
        except OSError:
            self.skipTest("port 3000 is in use on this machine")
        finally:
            s.close()
        try:
            n = self.start_node(["--host", "127.0.0.1", "--data-dir",
                                 os.path.join(self.tmp, "d3000")], raw_args=True)
        except AssertionError as e:
            if "in use" in str(e):  # taken by someone else in the meantime (shared machine)
                self.skipTest("port 3000 became busy")
            raise
        self.assertEqual(n.port, 3000)
        n.stop()

    def assertConfigError(self, args, env=None, mentions=None, cwd=None, only_line=True):
        """Non-zero exit (not a signal), the error as one line `skyring: error: ...` on stderr,
        and (only_line) nothing else on stderr."""
        rc, out, err = run_binary(args, env=env, cwd=cwd)
        self.assertIsNotNone(rc, "skyring %r started instead of failing: %r" % (args, err))
        self.assertNotEqual(rc, 0, "skyring %r exited 0: %r" % (args, err))
        self.assertGreater(rc, 0, "skyring %r died from signal %d: %r" % (args, -rc, err))
        lines = err.splitlines()
        self.assertTrue(lines, "nothing on stderr for %r" % (args,))
        errors = [l for l in lines if l.startswith("skyring: error:")]
        self.assertEqual(len(errors), 1, "expected one `skyring: error:` line for %r: %r" % (args, err))
        self.assertEqual(lines[-1], errors[0], "the error is not the last line: %r" % err)
        if only_line:
            self.assertEqual(len(lines), 1, "expected exactly one line on stderr for %r: %r"
                             % (args, err))
        if mentions:
            self.assertIn(mentions, errors[0])
        return errors[0]

    def test_bad_configuration_is_one_line_and_nonzero_exit(self):
        d = os.path.join(self.tmp, "d")
        base = ["run", "--host", "127.0.0.1", "--port", "0", "--data-dir", d]
        a_file = self.write("a-file", "not a dir")
        cases = [
            ("unknown flag", base + ["--bogus", "1"], None, "bogus"),
            ("unknown flag no value", base + ["--frobnicate"], None, "frobnicate"),
            ("port not a number", ["run", "--port", "abc", "--data-dir", d], None, "port"),
            ("port too large", ["run", "--port", "70000", "--data-dir", d], None, "port"),
            ("port negative", ["run", "--port", "-1", "--data-dir", d], None, "port"),
            ("port from env", ["run", "--data-dir", d], {"SKYRING_PORT": "eighty"}, "port"),
            ("bad storage", base + ["--storage", "sqlite"], None, "storage"),
            ("bad log level", base + ["--log-level", "loud"], None, "log-level"),
            ("bad log format", base + ["--log-format", "xml"], None, "log-format"),
            ("bad retention", base + ["--retention", "forever"], None, "retention"),
            ("bad idle timeout", base + ["--idle-timeout", "5x"], None, "idle-timeout"),
            ("bad delivery timeout", base + ["--delivery-timeout", "-1s"], None, "delivery-timeout"),
            ("data dir is a file", ["run", "--host", "127.0.0.1", "--port", "0", "--data-dir", a_file],
             None, "data-dir"),
            ("data dir under a file", ["run", "--host", "127.0.0.1", "--port", "0", "--data-dir",
                                       os.path.join(a_file, "sub")], None, "data-dir"),
            ("data dir in /proc", ["run", "--host", "127.0.0.1", "--port", "0", "--data-dir",
                                   "/proc/skyring-it"], None, "data-dir"),
            ("missing config file", base + ["--config", os.path.join(self.tmp, "nope.toml")], None,
             "config"),
            ("unknown command", ["frobnicate"], None, "frobnicate"),
        ]
        for name, args, env, word in cases:
            with self.subTest(name):
                self.assertConfigError(args, env, word)
        # No command at all: usage on stderr, non-zero exit.
        rc, out, err = run_binary([])
        self.assertEqual(rc, 2)
        self.assertIn("Usage", err)

    def test_unwritable_data_dir(self):
        d = os.path.join(self.tmp, "ro")
        os.mkdir(d)
        os.chmod(d, 0o500)
        self.addCleanup(os.chmod, d, 0o700)
        if os.geteuid() == 0:
            # root writes anyway; a read-only bind is not available: use a file-system that
            # refuses writes for everyone instead.
            self.assertConfigError(["run", "--host", "127.0.0.1", "--port", "0", "--data-dir",
                                    "/sys/skyring-it"], mentions="data-dir")
        else:
            self.assertConfigError(["run", "--host", "127.0.0.1", "--port", "0", "--data-dir", d],
                                   mentions="data-dir")

    def test_toml_errors(self):
        d = os.path.join(self.tmp, "d")
        cases = [("unknown key", "port = 0\nbogus_key = 1\n", "bogus_key"),
                 ("malformed", "port = = 3\n[unterminated\n", "config"),
                 ("bad value type", "port = \"eighty\"\n", "port"),
                 ("unsupported value", "port = { a = 1 }\n", "port"),
                 ("binary junk", "\x00\x01\x02 = \xff\n", "config")]
        for name, text, word in cases:
            with self.subTest(name):
                cfg = self.write("bad-%s.toml" % name.replace(" ", "-"), text)
                self.assertConfigError(["run", "--config", cfg, "--host", "127.0.0.1",
                                        "--data-dir", d], mentions=word)

    def test_port_in_use_and_bad_host(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        try:
            port = s.getsockname()[1]
            line = self.assertConfigError(["run", "--host", "127.0.0.1", "--port", str(port),
                                           "--data-dir", os.path.join(self.tmp, "d")],
                                          only_line=False)
            self.assertIn(str(port), line)
        finally:
            s.close()
        line = self.assertConfigError(["run", "--host", "not-an-ip", "--port", "0", "--data-dir",
                                       os.path.join(self.tmp, "d")], only_line=False)
        self.assertIn("host", line)

    def test_port_in_use_and_bad_host_error_is_the_only_stderr_line(self):
        # The node claims its address before it opens storage or recovers anything, so a port
        # in use or a bad --host is the one and only stderr line, `skyring: error: ...`.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        try:
            port = s.getsockname()[1]
            with self.subTest("port in use"):
                self.assertConfigError(["run", "--host", "127.0.0.1", "--port", str(port),
                                        "--data-dir", os.path.join(self.tmp, "d")])
        finally:
            s.close()
        with self.subTest("bad host"):
            self.assertConfigError(["run", "--host", "not-an-ip", "--port", "0", "--data-dir",
                                    os.path.join(self.tmp, "d")])

    def test_data_dir_locked_by_running_node(self):
        # A second node on the same data dir must refuse (one line), not corrupt it.
        n = self.start_node(data_dir=os.path.join(self.tmp, "shared"))
        line = self.assertConfigError(["run", "--host", "127.0.0.1", "--port", "0", "--data-dir",
                                       n.data_dir])
        self.assertIn(n.data_dir, line)
        self.assertEqual(n.client().get("/ping").status, 200)
        n.stop()

    def test_listening_line_is_logged_at_every_log_level(self):
        # The `listening on HOST:PORT` line is written at every log level, warn and error
        # included (SPEC section 1: "The node logs one line containing `listening` and the
        # bound address"; with --port 0 it is the only way to learn the port).
        for level in ("warn", "error"):
            with self.subTest(level=level):
                port, = self.ports(1)
                args = ["run", "--port", str(port), "--host", "127.0.0.1", "--log-level", level,
                        "--data-dir", os.path.join(self.tmp, "lvl-" + level)]
                env = {k: v for k, v in os.environ.items() if not k.startswith("SKYRING_")}
                p = subprocess.Popen([skyring_bin()] + args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
                try:
                    c = Client(port, timeout=5)
                    wait_until(lambda: _ping(c), 20, interval=0.05, msg="node serving")
                    c.close()
                finally:
                    p.send_signal(signal.SIGTERM)
                    try:
                        _, err = p.communicate(timeout=30)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        _, err = p.communicate(timeout=10)
                self.assertEqual(p.returncode, 0, err)
                listening = [l for l in err.decode().splitlines() if "listening" in l]
                self.assertEqual(len(listening), 1,
                                 "no `listening` line with --log-level %s: %r" % (level, err))
                self.assertIn("127.0.0.1:%d" % port, listening[0])

    def test_help_and_version(self):
        rc, out, err = run_binary(["run", "--help"])
        self.assertEqual(rc, 0)
        for flag in ("--port", "--host", "--data-dir", "--storage", "--retention", "--log-level",
                     "--log-format", "--config", "--idle-timeout", "--delivery-timeout"):
            self.assertIn(flag, out)
        rc, out, err = run_binary(["version"])
        self.assertEqual(rc, 0)
        self.assertRegex(out, r"skyring \d+\.\d+")


def _ping(c):
    try:
        return c.get("/ping").status == 200
    except (OSError, http.client.HTTPException):
        c.close()
        return False


class SignalTest(SkyringTestCase):

    def test_sigterm_exits_0(self):
        n = self.start_node()
        c = n.client()
        self.assertCreated(c.create(timer_body("http://127.0.0.1:9/x", timeout=3600_000)))
        n.stop(signal.SIGTERM)

    def test_sigint_exits_0(self):
        n = self.start_node()
        self.assertEqual(n.client().get("/ping").status, 200)
        n.stop(signal.SIGINT)

    def test_stop_with_open_idle_connections_is_prompt(self):
        # Idle connections are closed at the stop, not waited for: with an idle timeout and a
        # shutdown timeout of 120 s, a stop that waited for them would miss the 30 s deadline
        # of n.stop() by far.
        n = self.start_node(["--idle-timeout", "120s", "--shutdown-timeout", "120s"])
        socks = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", n.port), timeout=10)
            s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(4096)
            socks.append(s)
        half = socket.create_connection(("127.0.0.1", n.port), timeout=10)
        half.sendall(b"POST /timer HTTP/1.1\r\nHost: x\r\nContent-Le")
        socks.append(half)
        try:
            n.stop(timeout=30)
        finally:
            for s in socks:
                s.close()

    def test_sigterm_lets_inflight_delivery_finish(self):
        rec = self.start_receiver()
        gate = threading.Event()
        rec.on("/slow", gate=gate)
        n = self.start_node(["--shutdown-timeout", "20s"])
        c = n.client()
        tid = self.assertCreated(c.create(timer_body(rec.url("/slow"), timeout=10, data="x")))
        rec.wait_timer(tid)
        n.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        self.assertTrue(n.running(), "node exited without waiting for the delivery")
        gate.set()
        rc = n.proc.wait(20)
        n._finish()
        self.assertEqual(rc, 0, n.log())
        n.start()
        self.assertEqual(n.client().state(tid), "succeeded")
        time.sleep(1.0)
        self.assertEqual(len(rec.for_timer(tid)), 1, "delivered again after a graceful stop")
        n.stop()

    def test_shutdown_timeout_aborts_stuck_delivery_which_stays_owed(self):
        rec = self.start_receiver()
        gate = threading.Event()
        rec.on("/stuck", gate=gate)
        # The delivery would hold for 120 s (delivery timeout), far past n.stop()'s 30 s
        # deadline; the log line shows the stop gave up after --shutdown-timeout.
        n = self.start_node(["--shutdown-timeout", "500ms", "--delivery-timeout", "120s"])
        c = n.client()
        tid = self.assertCreated(c.create(timer_body(rec.url("/stuck"), timeout=10)))
        rec.wait_timer(tid)
        n.stop(timeout=30)
        self.assertIn("still in flight after 500 ms", n.log(), "stop did not use --shutdown-timeout")
        gate.set()  # later attempts are answered at once
        n.start()
        # The aborted attempt's outcome is unknown: the timer is still owed and delivered.
        got = rec.wait_timer(tid, count=2, timeout=20)
        self.assertEqual(len(got), 2)
        wait_until(lambda: n.client().state(tid) == "succeeded")
        n.stop()


    def test_sigterm_under_create_load_keeps_every_acknowledged_timer(self):
        n = self.start_node()
        acked, unknown, statuses = set(), set(), []
        lock = threading.Lock()
        stop = threading.Event()

        def creator(k):
            c = Client(n.port, timeout=20)
            try:
                for i in range(400):
                    if stop.is_set():
                        return
                    tid = "term-%d-%d" % (k, i)
                    try:
                        r = c.create(timer_body("http://127.0.0.1:9/x", timeout=3600_000,
                                                data=tid), timer_id=tid)
                    except Exception:  # noqa: BLE001 - no answer: may or may not exist
                        with lock:
                            unknown.add(tid)
                        return
                    with lock:
                        statuses.append(r.status)
                        if r.status == 201:
                            acked.add(tid)
                    if r.status != 201:
                        return
            finally:
                c.close()

        threads = [threading.Thread(target=creator, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: len(acked) >= 100 or not any(t.is_alive() for t in threads), 30,
                   interval=0.01)
        rc = n.signal_stop(signal.SIGTERM)
        stop.set()
        for t in threads:
            t.join(30)
        self.assertEqual(rc, 0, n.log())
        self.assertLessEqual(set(statuses), {201, 503}, "answers during shutdown")
        print("\n  SIGTERM under load: %d acknowledged, %d without answer, answers %r"
              % (len(acked), len(unknown), collections.Counter(statuses)))
        n.start()
        c = n.client()
        missing = [t for t in sorted(acked) if c.state(t) != "pending"]
        self.assertEqual(missing, [], "acknowledged timers lost by a graceful stop")
        for t in unknown:
            self.assertIn(c.get("/timer/" + t).status, (200, 404))
        n.stop()


class RestartTest(SkyringTestCase):

    def test_restart_keeps_pending_and_completed_timers(self):
        rec = self.start_receiver()
        rec.on("/fail", statuses=[404])
        n = self.start_node()
        c = n.client()
        done = self.assertCreated(c.create(timer_body(rec.url("/done"), timeout=10, data="d"),
                                           timer_id="rs-done"))
        failed = self.assertCreated(c.create(timer_body(rec.url("/fail"), timeout=10),
                                             timer_id="rs-failed"))
        cancelled = self.assertCreated(c.create(timer_body(rec.url("/cancel"), timeout=3600_000),
                                                timer_id="rs-cancelled"))
        self.assertEqual(c.delete("/timer/" + cancelled).status, 202)
        wait_until(lambda: c.state(done) == "succeeded" and c.state(failed) == "failed")
        before = {t: c.timer(t) for t in (done, failed, cancelled)}
        # Pending timers due after the restart (several due times).
        due = {}
        for i in range(10):
            tid = self.assertCreated(c.create(timer_body(rec.url("/later"), timeout=3000 + 100 * i,
                                                         data={"i": i})))
            due[tid] = c.timer(tid)
        gen_before = set(due)
        node_id = c.get("/health").json().get("node")
        n.stop()
        n.start()
        c = n.client()
        self.assertEqual(c.get("/health").json().get("node"), node_id, "node id not persisted")
        for tid, t in due.items():
            g = c.timer(tid)
            if g["state"] == "pending":
                for f in ("due", "created", "data", "callback", "retry"):
                    self.assertEqual(g[f], t[f], "%s changed across restart" % f)
        got = rec.wait_path("/later", count=len(due), timeout=30)
        self.assertEqual(sorted(r.timer_id for r in got), sorted(due))
        for r in got:
            self.assertGreaterEqual(r.time * 1000, due[r.timer_id]["due"], "delivered early")
            self.assertEqual(json.loads(r.body), due[r.timer_id]["data"])
        for tid in due:
            wait_until(lambda: c.state(tid) == "succeeded")
        # Completed ones stay readable, unchanged.
        for tid, t in before.items():
            self.assertEqual(c.timer(tid), t)
        # Idempotent create of a completed timer still answers 201 and does not re-deliver.
        self.assertCreated(c.create(timer_body(rec.url("/done"), timeout=10, data="d"),
                                    timer_id="rs-done"), "rs-done")
        # Generated ids stay unique across restarts.
        new_ids = {self.assertCreated(c.create(timer_body(rec.url("/x"), timeout=3600_000)))
                   for _ in range(10)}
        self.assertFalse(new_ids & gen_before)
        time.sleep(1.0)
        self.assertEqual(len(rec.for_timer(done)), 1)
        self.assertEqual(len(rec.for_timer(failed)), 1)
        self.assertEqual(rec.for_timer(cancelled), [])
        self.assertEqual(len(rec.for_path("/later")), len(due), "a timer was delivered twice")
        n.stop()

    def test_overdue_timers_delivered_at_once_after_restart(self):
        # Due 3 s after create; the node stops right away. On a very slow machine a timer may
        # still fire before the stop: it is then delivered once and never again, and only the
        # others are overdue at the restart. None of them is delivered early or twice.
        rec = self.start_receiver()
        n = self.start_node()
        c = n.client()
        ids = {}
        for i in range(5):
            tid = self.assertCreated(c.create(timer_body(rec.url("/overdue"), timeout=3000,
                                                         data=str(i))))
            ids[tid] = c.timer(tid)["due"]
        n.stop()
        before_stop = {r.timer_id for r in rec.for_path("/overdue")}
        if len(before_stop) == len(ids):
            self.skipTest("every timer fired before the node stopped (machine too slow)")
        # All of them become due while the node is down.
        wait_until(lambda: time.time() * 1000 > max(ids.values()) + 200, 15, interval=0.1,
                   msg="due times passed")
        n.start()
        c = n.client()
        # "At once": the wait's deadline is the only time bound (a broken recovery never
        # delivers them).
        got = rec.wait_path("/overdue", count=len(ids), timeout=15)
        for r in got:
            self.assertGreaterEqual(r.time * 1000, ids[r.timer_id])
        self.assertEqual(sorted(r.timer_id for r in got), sorted(ids), "delivered twice")
        for tid in ids:
            wait_until(lambda: c.state(tid) == "succeeded", msg="%s succeeded" % tid)
        n.stop()

    def test_retry_state_survives_restart(self):
        rec = self.start_receiver()
        rec.on("/flaky", statuses=[503, 200])
        n = self.start_node()
        c = n.client()
        tid = self.assertCreated(c.create(timer_body(rec.url("/flaky"), timeout=10,
                                                     retry={"attempts": 3, "backoff_ms": 3000,
                                                            "max_backoff_ms": 3000})))
        wait_until(lambda: c.state(tid) == "retrying")
        t = c.timer(tid)
        self.assertEqual(t["attempts"], 1)
        n.stop()
        n.start()
        c = n.client()
        g = c.timer(tid)
        self.assertIn(g["state"], ("retrying", "executing", "succeeded"), g)
        self.assertEqual(g["attempts"] if g["state"] != "succeeded" else 1, 1)
        wait_until(lambda: c.state(tid) == "succeeded", 20)
        got = rec.for_timer(tid)
        self.assertEqual([r.attempt for r in got], [1, 2])
        self.assertGreaterEqual(got[1].time * 1000, t["next_attempt"], "retry came early")
        self.assertEqual(c.timer(tid)["attempts"], 2)
        n.stop()

    def test_memory_storage_loses_timers(self):
        # Due far away: the stop never races the delivery; 404 and an empty pending list after
        # the restart prove the timer is gone.
        rec = self.start_receiver()
        n = self.start_node(storage="memory")
        c = n.client()
        tid = self.assertCreated(c.create(timer_body(rec.url("/mem"), timeout=3600_000),
                                          timer_id="mem-1"))
        self.assertEqual(c.state(tid), "pending")
        n.stop()
        n.start()
        c = n.client()
        self.assertEqual(c.get("/timer/" + tid).status, 404)
        self.assertEqual(c.get("/timer?state=pending").json()["timers"], [])
        self.assertEqual(c.get("/health").json()["status"], "ok")
        self.assertEqual(rec.for_path("/mem"), [])
        n.stop()


class RetentionTest(SkyringTestCase):

    def test_completed_timers_purged_after_retention(self):
        rec = self.start_receiver()
        n = self.start_node(["--retention", "2s"])
        c = n.client()
        body = timer_body(rec.url("/ret"), timeout=10, data="r")
        tid = self.assertCreated(c.create(body, timer_id="ret-1"))
        cancelled = self.assertCreated(c.create(timer_body(rec.url("/ret"), timeout=3600_000),
                                                timer_id="ret-2"))
        self.assertEqual(c.delete("/timer/" + cancelled).status, 202)
        wait_until(lambda: c.state(tid) == "succeeded")
        t = c.timer(tid)
        self.assertIsNotNone(t)  # readable right after completion
        wait_until(lambda: c.get("/timer/" + tid).status == 404, 20, interval=0.1,
                   msg="succeeded timer purged")
        purged_at = time.time()
        self.assertGreaterEqual(purged_at * 1000, t["completed"] + 2000, "purged before retention")
        wait_until(lambda: c.get("/timer/" + cancelled).status == 404, 20, interval=0.1,
                   msg="cancelled timer purged")
        self.assertEqual(len(rec.for_timer(tid)), 1)
        # After retention the id is free: the same create makes a new timer.
        self.assertCreated(c.create(body, timer_id="ret-1"), "ret-1")
        got = rec.wait_timer(tid, count=2)
        self.assertEqual(len(got), 2)
        # Purges survive a restart.
        wait_until(lambda: c.state(tid) == "succeeded")
        wait_until(lambda: c.get("/timer/" + tid).status == 404, 20, interval=0.1)
        n.stop()
        n.start()
        self.assertEqual(n.client().get("/timer/" + tid).status, 404)
        self.assertEqual(n.client().get("/timer/" + cancelled).status, 404)
        n.stop()

    def test_pending_timers_are_not_purged(self):
        # State-based: a completed witness created after the pending timer is purged (so the
        # purge ran past the retention of both), while the pending timer is still there and is
        # delivered when replaced with a short timeout.
        rec = self.start_receiver()
        n = self.start_node(["--retention", "1s"])
        c = n.client()
        tid = self.assertCreated(c.create(timer_body(rec.url("/p"), timeout=3600_000)))
        witness = self.assertCreated(c.create(timer_body(rec.url("/w"), timeout=10)))
        wait_until(lambda: c.state(witness) == "succeeded", msg="witness delivered")
        wait_until(lambda: c.get("/timer/" + witness).status == 404, 20, interval=0.1,
                   msg="witness purged")
        self.assertEqual(c.state(tid), "pending")
        self.assertEqual(c.put("/timer/" + tid, timer_body(rec.url("/p"), timeout=10)).status, 200)
        rec.wait_timer(tid, timeout=15)
        n.stop()


if __name__ == "__main__":
    unittest.main()
