"""Transport plugins (docs/plugins.md): the real node with `--transport` and the example
`file` plugin (examples/file_transport), plus the loader's start-up errors."""

import json
import os
import shutil
import tempfile
import unittest

from harness import SkyringTestCase, run_binary, skyring_bin, timer_body, wait_until

FILE_PLUGIN = "libskyring_file_transport.so"
BAD_ABI_PLUGIN = "libskyring_test_plugin_bad_abi.so"


def plugin_dir():
    """<build>/examples next to the skyring binary (build/, build-asan/, ...), or
    $SKYRING_PLUGIN_DIR."""
    d = os.environ.get("SKYRING_PLUGIN_DIR")
    if d:
        return d
    bin_dir = os.path.dirname(os.path.abspath(skyring_bin()))
    for cand in (os.path.join(bin_dir, "examples"), os.path.join(bin_dir, "..", "examples")):
        if os.path.exists(os.path.join(cand, FILE_PLUGIN)):
            return os.path.normpath(cand)
    raise AssertionError("%s not found in %s/examples: build the skyring_file_transport target"
                         % (FILE_PLUGIN, bin_dir))


def plugin(name):
    return os.path.join(plugin_dir(), name)


class FilePluginTest(SkyringTestCase):

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="skyring-file-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        cfg = os.path.join(self.dir, "skyring.toml")
        self.out = os.path.join(self.dir, "out")
        os.mkdir(self.out)
        with open(cfg, "w") as f:
            f.write('[transports.file]\ndir = "%s"\nfsync = true\n' % self.out)
        self.node = self.start_node(["--transport", plugin(FILE_PLUGIN), "--config", cfg])
        self.c = self.node.client()

    def uri(self, name):
        return "file://" + os.path.join(self.out, name)

    def create(self, name, **kw):
        r = self.c.create(timer_body(self.uri(name), transport="file", **kw))
        return self.assertCreated(r)

    def wait_state(self, tid, state, timeout=20):
        wait_until(lambda: self.c.state(tid) == state, timeout,
                   msg="timer %s becomes %s (now %r)" % (tid, state, self.c.timer(tid)))
        return self.c.timer(tid)

    def lines(self, name):
        try:
            with open(os.path.join(self.out, name), encoding="utf-8") as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return None

    def test_string_and_object_payloads_are_appended_once_each(self):
        obj = {"a": 1, "b": [True, None, "x"], "c": {"d": "\u00e9"}}
        t1 = self.create("both.log", timeout=10, data="h\u00e9llo world")
        self.wait_state(t1, "succeeded")
        t2 = self.create("both.log", timeout=10, data=obj)
        t = self.wait_state(t2, "succeeded")
        self.assertEqual(t["attempts"], 1)
        lines = self.lines("both.log")
        self.assertEqual(len(lines), 2, lines)
        self.assertEqual(lines[0], "h\u00e9llo world")
        self.assertEqual(json.loads(lines[1]), obj)

    def test_bad_uri_is_400(self):
        for uri in ("file:///etc/passwd", "file://relative/x", "file://" + self.out + "/../x",
                    "http://127.0.0.1:9/x", "file://" + self.out + "/"):
            r = self.c.create(timer_body(uri, transport="file", timeout=10))
            self.assertError(r, 400, "callback.uri")
        r = self.c.create(timer_body("http://127.0.0.1:9/x", transport="nope", timeout=10))
        self.assertError(r, 400, "callback.transport")

    def test_delete_cancels(self):
        gone = self.create("cancelled.log", timeout=1000, data="never")
        self.assertEqual(self.c.delete("/timer/" + gone).status, 202)
        # Due after the cancelled one would have been: once it is written, that one was not.
        later = self.create("later.log", timeout=1500, data="later")
        self.wait_state(later, "succeeded")
        self.assertEqual(self.lines("later.log"), ["later"])
        self.assertIsNone(self.lines("cancelled.log"))

    def test_put_replaces(self):
        tid = self.create("old.log", timeout=60_000, data="old")
        r = self.c.put("/timer/" + tid, timer_body(self.uri("new.log"), transport="file",
                                                   timeout=10, data="new"))
        self.assertEqual(r.status, 200, r)
        self.wait_state(tid, "succeeded")
        self.assertEqual(self.lines("new.log"), ["new"])
        self.assertIsNone(self.lines("old.log"))

    def test_missing_directory_is_retried_until_it_exists(self):
        tid = self.create("later/out.log", timeout=10, data="finally",
                          retry={"attempts": 50, "backoff_ms": 100, "max_backoff_ms": 300})
        wait_until(lambda: (self.c.timer(tid) or {}).get("attempts", 0) >= 2, 20,
                   msg="two failed attempts")
        t = self.c.timer(tid)
        self.assertIn(t["state"], ("pending", "retrying", "executing"), t)
        self.assertIn("No such file", t["last_error"] or "", t)
        self.assertIsNone(self.lines("later/out.log"))
        os.mkdir(os.path.join(self.out, "later"))
        t = self.wait_state(tid, "succeeded")
        self.assertGreaterEqual(t["attempts"], 3)
        self.assertEqual(self.lines("later/out.log"), ["finally"])

    def test_kill_during_delivery_and_restart_delivers_every_timer(self):
        n = 300
        ids = {}
        for i in range(n):
            # Due over ~1.5 s: the kill comes while most are still owed.
            ids[self.create("crash.log", timeout=300 + 5 * i, data="line-%d" % i)] = "line-%d" % i
        wait_until(lambda: len(self.lines("crash.log") or []) >= 20, 20, msg="deliveries started")
        self.node.kill()
        before = len(self.lines("crash.log"))
        self.node.start()
        self.c = self.node.client()
        for tid in ids:
            self.wait_state(tid, "succeeded", timeout=30)
        lines = self.lines("crash.log")
        # At least once: every line is there; a line may repeat only when the kill hit between
        # the write and the node's record of it.
        self.assertEqual(set(lines), set(ids.values()))
        self.assertLessEqual(len(lines) - n, 20, "more repeats than deliveries in flight")
        self.assertLess(before, n, "the kill came after every delivery: nothing was tested")


class PluginLoaderErrorTest(SkyringTestCase):

    def run_node(self, *args):
        d = tempfile.mkdtemp(prefix="skyring-plugin-err-")
        self.addCleanup(shutil.rmtree, d, True)
        rc, _, err = run_binary(["run", "--host", "127.0.0.1", "--port", "0", "--storage",
                                 "memory", "--data-dir", d] + list(args))
        self.assertIsNotNone(rc, "the node started:\n" + err)
        self.assertNotEqual(rc, 0, err)
        errors = [l for l in err.splitlines() if "error" in l]
        self.assertEqual(len(errors), 1, err)
        return errors[0]

    def test_missing_file(self):
        path = "/nonexistent/libnothing.so"
        line = self.run_node("--transport", path)
        self.assertIn("--transport %s: cannot load" % path, line)

    def test_wrong_abi_version(self):
        path = plugin(BAD_ABI_PLUGIN)
        self.assertTrue(os.path.exists(path), path)
        line = self.run_node("--transport", path)
        self.assertIn("--transport %s: plugin ABI version 999 found, 1 expected" % path, line)

    def test_same_plugin_twice(self):
        path = plugin(FILE_PLUGIN)
        line = self.run_node("--transport", path, "--transport", path)
        self.assertIn("a transport named 'file' is already loaded", line)

    def test_bad_plugin_settings(self):
        d = tempfile.mkdtemp(prefix="skyring-plugin-cfg-")
        self.addCleanup(shutil.rmtree, d, True)
        cfg = os.path.join(d, "c.toml")
        with open(cfg, "w") as f:
            f.write("[transports.file]\ncolour = 'blue'\n")
        line = self.run_node("--transport", plugin(FILE_PLUGIN), "--config", cfg)
        self.assertIn("transport 'file' failed to start", line)
        self.assertIn("unknown key", line)


if __name__ == "__main__":
    unittest.main()
