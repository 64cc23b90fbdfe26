"""Cluster mode (SPEC section 5): three nodes on one nats-server, requests through any node.

* Membership and ring: every node lists the 3 members with one ring fingerprint; the ring's
  points are XXH3-64("<member>#<i>", seed) (so the test computes owners itself) and each node
  owns 33% +- 5% of ids.
* Creates through every node (with and without x-timer-id) are delivered exactly once, never
  early; GET/PUT/DELETE through a non-owner act on the owner's timer (forwarded, counted in
  skyring_cluster_forwarded_total); idempotent create answers the same through every node.
* Forward batches: POST /cluster/forward answers each request of a batch in order (creates at
  the owner, bad bodies 400, /cluster/* refused inside a batch); bad batches are refused whole
  (403 wrong cluster, 400 malformed or too many, 405); 48 concurrent clients on one node make
  forwards go in batches, and every timer is still created once and delivered once.
* Events on NATS: create/success/cancel on skyring:events from the owner.
* An owner killed with -9: requests through the survivors are answered (never hang), with 503 +
  x-skyring-reason while the owner is unreachable, normally once the ring dropped it; restarted
  on its data dir it holds its timers again.

Each test starts its own nats-server on a free loopback port (cluster_harness.NatsServer).
"""

import collections
import json
import os
import random
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import unittest

from cluster_harness import (EVENTS_SUBJECT, NODE_SUBJECT, Cluster, ClusterTestCase, Ledger,
                             Ring, check_exactly_once, create_one, random_id)
from harness import Client, Receiver, now_ms, skyring_bin, timer_body, wait_until

FAR = 3600_000


def list_ids(node, state="pending", prefix="", max_pages=200):
    """Every id in `state` on this node (GET /timer is per node), paging to the end."""
    c = Client(node.port, timeout=15)
    out = set()
    cursor = None
    try:
        for _ in range(max_pages):
            path = "/timer?state=%s&limit=1000" % state
            if cursor:
                path += "&cursor=" + cursor
            r = c.get(path)
            assert r.status == 200, r
            body = r.json()
            out |= {t["id"] for t in body["timers"] if t["id"].startswith(prefix)}
            cursor = body.get("next_cursor")
            if not cursor:
                return out
    finally:
        c.close()
    raise AssertionError("listing of %s did not end within %d pages" % (node.node_id, max_pages))


class ClusterApiTest(ClusterTestCase):
    """One 3-node cluster, one receiver and one NATS subscriber for the whole class; each test
    uses its own ids and receiver paths."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = Cluster(3)
        cls.shared_clusters = [cls.cluster]
        try:
            cls.receiver = Receiver()
            cls.events = cls.cluster.subscribe()
            cls.ring = cls.cluster.ring()
        except BaseException:
            cls.cluster.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.receiver.close()
        cls.cluster.close()

    def n(self, i):
        return self.cluster.node("node-%d" % i)

    def client(self, node, timeout=30.0):
        c = Client(node.port, timeout=timeout)
        self.addCleanup(c.close)
        return c

    def hook(self, name="hook"):
        return self.receiver.url(self.path(name))

    def need_ring(self):
        if not self.ring.verified:
            self.ring = self.cluster.ring()
        self.assertTrue(self.ring.verified,
                        "GET /cluster points are not XXH3-64(\"<member>#<i>\", seed): cannot "
                        "compute owners (%r)" % {k: v for k, v in self.ring.info.items()
                                                 if k != "points"})
        return self.ring

    def id_owned_by(self, node_id, prefix):
        ring = self.need_ring()
        rnd = random.Random(hash((self.id(), node_id, prefix)))
        for _ in range(10000):
            tid = random_id(prefix, 10, rnd)
            if ring.owner(tid) == node_id:
                return tid
        self.fail("no id owned by %s found" % node_id)

    # ------------------------------------------------------------------ membership, ring

    def test_membership_and_ring_on_every_node(self):
        # Started one after the other, the three agree on one ring within a few seconds.
        self.assertLess(self.cluster.formed_in, 15.0, "ring formed in %.1f s"
                        % self.cluster.formed_in)
        nodes = [self.n(i) for i in (1, 2, 3)]
        fps = set()
        for node in nodes:
            info = self.cluster.info(node)
            self.assertIsNotNone(info, "GET /cluster on %s" % node.node_id)
            self.assertEqual(info["node"], node.node_id)
            self.assertEqual(info["cluster"], self.cluster.name)
            members = {m["id"]: m for m in info["members"]}
            self.assertEqual(sorted(members), ["node-1", "node-2", "node-3"], info["members"])
            for m in nodes:
                self.assertEqual(members[m.node_id]["address"], "127.0.0.1:%d" % m.fixed_port)
                self.assertEqual(members[m.node_id]["state"], "active")
            self.assertIsInstance(info["ring_version"], int)
            self.assertEqual(info["hash"], "xxh3-64")
            self.assertGreater(info["vnodes"], 0)
            self.assertEqual(len(info["points"]), 3 * info["vnodes"])
            fps.add(str(info["ring_fingerprint"]))
        self.assertEqual(len(fps), 1, "nodes disagree on the ring: %r" % fps)
        ring = self.need_ring()
        # SPEC 5: each of 3 nodes owns 33% +- 5% of ids.
        rnd = random.Random(7)
        counts = collections.Counter(ring.owner(random_id("", 12, rnd)) for _ in range(30000))
        shares = {m: counts[m] / 30000 for m in ("node-1", "node-2", "node-3")}
        for m, s in shares.items():
            self.assertTrue(0.28 <= s <= 0.38, "share of %s is %.3f (%r)" % (m, s, shares))

    def test_health_and_metrics_show_the_cluster(self):
        for i in (1, 2, 3):
            node = self.n(i)
            h = self.cluster.health(node)
            self.assertIsNotNone(h)
            self.assertEqual(h.get("status"), "ok", h)
            cl = h.get("cluster")
            self.assertIsInstance(cl, dict, h)
            for k in ("state", "nats", "members", "ring_version", "settled"):
                self.assertIn(k, cl, h)
            self.assertEqual(cl["members"], 3, h)
            self.assertNotIn(cl["nats"], (False, "disconnected", "down"), h)
            wait_until(lambda: self.cluster.settled([node]), 30, interval=0.1,
                       msg="%s settled" % node.node_id)
            m = self.cluster.metrics(node)
            self.assertEqual(m.get("skyring_cluster_ring_size"), 3.0, sorted(
                k for k in m if "cluster" in k or "nats" in k))
            self.assertEqual(m.get("skyring_nats_connected"), 1.0)
            for name in ("skyring_cluster_forwarded_total", "skyring_cluster_moves_out_total",
                         "skyring_cluster_moves_in_total", "skyring_cluster_ring_version"):
                self.assertIn(name, m, "metric %s missing on %s" % (name, node.node_id))

    # ------------------------------------------------------------------ creates and delivery

    def test_creates_through_every_node_delivered_exactly_once(self):
        path = self.path()
        ledger = Ledger()
        rnd = random.Random(11)
        fwd_before = self.cluster.metric_sum("skyring_cluster_forwarded_total")
        expect_forwarded = 0
        t0 = now_ms()
        for i in (1, 2, 3):
            node = self.n(i)
            c = self.client(node)
            for k in range(10):
                tid = random_id("c1-%d-" % i, 10, rnd)
                at = t0 + 2000 + rnd.randint(0, 2500)
                r = create_one(c, ledger, self.receiver.url(path), tid, at, via=node.node_id)
                self.assertCreated(r, tid)
                if self.ring.verified and self.ring.owner(tid) != node.node_id:
                    expect_forwarded += 1
            for k in range(10):  # generated ids
                at = t0 + 2000 + rnd.randint(0, 2500)
                r = c.create(timer_body(self.receiver.url(path), at=at, data={"k": k}))
                tid = self.assertCreated(r)
                ledger.record(tid, at, 201, node.node_id)
        self.assertEqual(len(ledger.acked), 60)
        fwd = self.cluster.metric_sum("skyring_cluster_forwarded_total") - fwd_before
        self.assertGreater(fwd, 0, "no request was forwarded (skyring_cluster_forwarded_total)")
        self.assertGreaterEqual(fwd, expect_forwarded,
                                "creates through a non-owner (by the ring) were not all forwarded")
        counts = check_exactly_once(self, self.receiver, path, ledger, timeout=40)
        self.assertEqual(len(counts), 60)
        # Every node answers GET for every timer (forwarding to the owner), the same record:
        # generated ids too, so the node that generated one must have created it at its owner.
        ring = self.need_ring()
        problems = []
        for tid in sorted(ledger.acked):
            sts = {i: self.client(self.n(i)).get("/timer/" + tid).status for i in (1, 2, 3)}
            if set(sts.values()) != {200}:
                problems.append("%s (created via %s, ring owner %s, held by %s): GET via "
                                "node-1/2/3 -> %r" % (
                                    tid, ledger.via.get(tid), ring.owner(tid),
                                    [n.node_id for n in self.cluster.running()
                                     if tid in list_ids(n, "succeeded", tid)],
                                    [sts[i] for i in (1, 2, 3)]))
        self.assertEqual(problems, [], "timers not readable through every node")
        for tid in sorted(ledger.acked)[::6]:
            seen = []
            for i in (1, 2, 3):
                c = self.client(self.n(i))
                wait_until(lambda: c.state(tid) == "succeeded", 20,
                           msg="%s succeeded via node-%d (%r)" % (tid, i, c.timer(tid)))
                seen.append((c.timer(tid)["due"], c.timer(tid)["created"]))
            self.assertEqual(len(set(seen)), 1, (tid, seen))
            self.assertEqual(seen[0][0], ledger.acked[tid])

    def test_get_put_delete_through_a_non_owner(self):
        owner = self.n(1)
        via, other = self.n(2), self.n(3)
        a = self.id_owned_by(owner.node_id, "gpd-a-")
        b = self.id_owned_by(owner.node_id, "gpd-b-")
        sentinel = self.id_owned_by(owner.node_id, "gpd-s-")
        cv, co = self.client(via), self.client(other)
        fwd_via = self.cluster.metric(via, "skyring_cluster_forwarded_total")
        fwd_owner = self.cluster.metric(owner, "skyring_cluster_forwarded_total")
        t0 = now_ms()
        at_a = t0 + 30_000
        self.assertCreated(cv.create(timer_body(self.hook("a"), at=at_a, data="v1"),
                                     timer_id=a), a)
        # GET through both non-owners: the owner's record.
        for c in (cv, co):
            g = c.get("/timer/" + a)
            self.assertEqual(g.status, 200, g)
            self.assertEqual(g.json()["id"], a)
            self.assertEqual(g.json()["state"], "pending")
            self.assertEqual(g.json()["due"], at_a)
        self.assertIn(a, list_ids(owner, prefix="gpd-a-"))
        self.assertNotIn(a, list_ids(via, prefix="gpd-a-"))
        self.assertGreater(self.cluster.metric(via, "skyring_cluster_forwarded_total"), fwd_via)
        self.assertEqual(self.cluster.metric(owner, "skyring_cluster_forwarded_total"), fwd_owner,
                         "the owner forwarded requests for its own ids")
        # PUT through a non-owner replaces it (new due time, new data).
        new_at = now_ms() + 2500
        r = cv.put("/timer/" + a, timer_body(self.hook("a"), at=new_at, data="v2"))
        self.assertEqual(r.status, 200, r)
        g = co.get("/timer/" + a)
        self.assertEqual(g.json()["due"], new_at, g)
        self.assertEqual(g.json()["data"], "v2", g)
        # DELETE through a non-owner cancels it; the sentinel, due after it on the same owner,
        # shows when the cancelled one would have fired.
        at_b = now_ms() + 2000
        self.assertCreated(co.create(timer_body(self.hook("b"), at=at_b), timer_id=b), b)
        self.assertCreated(co.create(timer_body(self.hook("s"), at=at_b + 1000),
                                     timer_id=sentinel), sentinel)
        r = cv.delete("/timer/" + b)
        self.assertEqual(r.status, 202, r)
        for i in (1, 2, 3):
            self.assertEqual(self.client(self.n(i)).state(b), "cancelled")
        # Unknown ids: the owner's 404 relayed, with its reason.
        ghost = self.id_owned_by(owner.node_id, "gpd-ghost-")
        self.assertError(cv.get("/timer/" + ghost), 404)
        self.assertError(cv.put("/timer/" + ghost, timer_body(self.hook("g"), timeout=FAR)), 404)
        self.assertError(cv.delete("/timer/" + ghost), 404)
        # Deliveries.
        got = self.receiver.wait_path(self.path("a"), 1, timeout=30)
        self.assertEqual(got[0].body, b"v2")
        self.assertGreaterEqual(got[0].time * 1000, new_at)
        self.receiver.wait_path(self.path("s"), 1, timeout=30)
        time.sleep(1.0)
        self.assertEqual(len(self.receiver.for_path(self.path("a"))), 1)
        self.assertEqual(self.receiver.for_path(self.path("b")), [], "a cancelled timer fired")
        self.assertEqual(cv.state(a), "succeeded")
        self.assertEqual(co.state(b), "cancelled")

    def test_idempotent_create_through_every_node(self):
        tid = random_id("idem-", 10, random.Random(3))
        body = timer_body(self.hook(), at=now_ms() + 1500, data="same")
        for i in (1, 2, 3, 2, 1):
            r = self.client(self.n(i)).create(body, timer_id=tid)
            self.assertCreated(r, tid)
        other = dict(body, data="different")
        for i in (1, 2, 3):
            self.assertError(self.client(self.n(i)).create(other, timer_id=tid), 409)
        got = self.receiver.wait_path(self.path(), 1, timeout=30)
        self.assertEqual(got[0].timer_id, tid)
        time.sleep(1.0)
        self.assertEqual(len(self.receiver.for_path(self.path())), 1)
        # After completion the same create still deduplicates, through any node.
        for i in (3, 1):
            self.assertCreated(self.client(self.n(i)).create(body, timer_id=tid), tid)
        time.sleep(0.5)
        self.assertEqual(len(self.receiver.for_path(self.path())), 1)

    def test_list_is_per_node(self):
        ring = self.need_ring()
        rnd = random.Random(5)
        ids = [random_id("lst-", 10, rnd) for _ in range(30)]
        for k, tid in enumerate(ids):
            c = self.client(self.n(1 + k % 3))
            self.assertCreated(c.create(timer_body(self.hook(), timeout=FAR), timer_id=tid), tid)
        try:
            for i in (1, 2, 3):
                node = self.n(i)
                want = {t for t in ids if ring.owner(t) == node.node_id}
                self.assertEqual(list_ids(node, prefix="lst-"), want, node.node_id)
        finally:
            for k, tid in enumerate(ids):
                self.client(self.n(1 + k % 3)).delete("/timer/" + tid)

    # ------------------------------------------------------------------ forward batches

    @staticmethod
    def forward_batch(requests):
        """SKF1 body (docs/cluster.md, "Forward batches"): (method, target, headers, body)."""
        def s(b):
            b = b.encode() if isinstance(b, str) else b
            return struct.pack("<I", len(b)) + b
        out = b"SKF1" + struct.pack("<I", len(requests))
        for method, target, headers, body in requests:
            out += s(method) + s(target) + struct.pack("<I", len(headers))
            for k, v in headers:
                out += s(k) + s(v)
            out += s(body)
        return out

    @staticmethod
    def forward_answers(data):
        """SKA1 body -> [(status, content_type, {header: value}, body)]."""
        assert data[:4] == b"SKA1", data[:16]
        i = 4

        def u32():
            nonlocal i
            v = struct.unpack_from("<I", data, i)[0]
            i += 4
            return v

        def s():
            nonlocal i
            n = u32()
            v = data[i:i + n]
            i += n
            return v

        out = []
        for _ in range(u32()):
            status, ct = u32(), s().decode()
            hdrs = {}
            for _ in range(u32()):
                k = s().decode()
                hdrs[k.lower()] = s().decode()
            out.append((status, ct, hdrs, s()))
        assert i == len(data), (i, len(data))
        return out

    def test_forward_batch_endpoint(self):
        """What an entry node sends when requests queue for an owner: each request of the batch
        is handled as if it came alone, answers in order; bad batches are refused whole."""
        entry = self.n(1)
        mine = self.id_owned_by("node-1", "fb1-")
        other = self.id_owned_by("node-2", "fb2-")  # the views agree: forwarded once more
        body = json.dumps(timer_body(self.hook(), timeout=FAR, data="fb"))
        hdrs = lambda tid: [("Content-Type", "application/json"), ("x-timer-id", tid),  # noqa
                            ("x-skyring-hops", "1")]
        batch = self.forward_batch([
            ("POST", "/timer", hdrs(mine), body),
            ("POST", "/timer", hdrs(other), body),
            ("POST", "/timer", hdrs(random_id("fbx-", 10)), "{not json"),
            ("POST", "/cluster/moves", [], "SKM1"),
            ("GET", "/timer/" + random_id("fbn-", 10), [("x-skyring-hops", "1")], ""),
        ])
        c = self.client(entry)
        fwd = {"Content-Type": "application/x-skyring-forward",
               "x-skyring-cluster": self.cluster.name}
        r = c.post("/cluster/forward", batch, headers=fwd)
        self.assertEqual(r.status, 200, r.body)
        answers = self.forward_answers(r.body)
        self.assertEqual([a[0] for a in answers], [201, 201, 400, 400, 404], answers)
        self.assertEqual(json.loads(answers[0][3])["id"], mine)
        self.assertEqual(json.loads(answers[1][3])["id"], other)
        self.assertEqual(answers[0][1], "application/json")
        self.assertIn("x-skyring-reason", answers[2][2])
        try:
            for tid in (mine, other):
                for i in (1, 2, 3):
                    self.assertEqual(self.client(self.n(i)).get("/timer/" + tid).status, 200)
                self.assertEqual(list_ids(self.cluster.node(self.ring.owner(tid)),
                                          prefix=tid), {tid})
            # Refused whole: wrong cluster, not a batch, wrong method, too many requests.
            self.assertError(c.post("/cluster/forward", batch,
                                    headers=dict(fwd, **{"x-skyring-cluster": "other"})), 403)
            self.assertError(c.post("/cluster/forward", b"SKF1\xff", headers=fwd), 400)
            self.assertError(c.post("/cluster/forward", b"", headers=fwd), 400)
            self.assertError(c.get("/cluster/forward"), 405)
            many = self.forward_batch([("GET", "/ping", [], "")] * 1025)
            self.assertError(c.post("/cluster/forward", many, headers=fwd), 400)
        finally:
            for tid in (mine, other):
                self.client(self.n(3)).delete("/timer/" + tid)

    def test_concurrent_forwards_go_in_batches_exactly_once(self):
        """Many clients on one node: forwards queue behind the owners' busy exchanges and go in
        batches (skyring_cluster_forward_batches_total); every timer is still created once,
        answered to its own client and delivered once."""
        entry = self.n(1)
        path = self.path()
        ledger = Ledger()
        before = self.cluster.metric(entry, "skyring_cluster_forward_batches_total")
        t0 = now_ms()
        lock = threading.Lock()
        wrong_id = []

        def worker(w, rnd_seed, count):
            rnd = random.Random(rnd_seed)
            c = Client(entry.port, timeout=30)
            try:
                for k in range(count):
                    tid = random_id("fbc-%d-" % w, 10, rnd)
                    r = create_one(c, ledger, self.receiver.url(path), tid,
                                   t0 + 3000 + rnd.randint(0, 2000), via=entry.node_id)
                    if r is not None and r.status == 201 and r.json().get("id") != tid:
                        with lock:
                            wrong_id.append((tid, r.json()))
            finally:
                c.close()

        rounds = 0
        while rounds < 6:  # bounded: each round is 48 clients x 10 creates
            rounds += 1
            threads = [threading.Thread(target=worker, args=(w, rounds * 100 + w, 10))
                       for w in range(48)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            if self.cluster.metric(entry, "skyring_cluster_forward_batches_total") > before:
                break
        self.assertGreater(self.cluster.metric(entry, "skyring_cluster_forward_batches_total"),
                           before, "no forward batch after %d rounds of 48 concurrent clients"
                           % rounds)
        self.assertEqual(wrong_id, [])
        self.assertEqual(dict(ledger.statuses), {201: len(ledger.acked)}, ledger.statuses)
        counts = check_exactly_once(self, self.receiver, path, ledger, timeout=60)
        self.assertEqual(len(counts), len(ledger.acked))

    # ------------------------------------------------------------------ events

    def test_timer_events_on_nats(self):
        ring = self.need_ring()
        owner = self.n(2)
        tid = self.id_owned_by(owner.node_id, "ev-")
        cancelled = self.id_owned_by(owner.node_id, "evc-")
        c = self.client(self.n(3))  # a non-owner
        self.assertCreated(c.create(timer_body(self.hook(), timeout=800, data="e"), timer_id=tid))
        self.assertCreated(c.create(timer_body(self.hook(), timeout=FAR), timer_id=cancelled))
        self.assertEqual(c.delete("/timer/" + cancelled).status, 202)
        for typ in ("create", "success"):
            ev = self.events.wait_for(lambda m, typ=typ: m.subject == EVENTS_SUBJECT and
                                      m.type == typ and m.timer == tid, 1, timeout=20,
                                      msg="%s event of %s" % (typ, tid))
            self.assertEqual(ev[0].node, ring.owner(tid), ev[0])
        ev = self.events.wait_for(lambda m: m.type == "cancel" and m.timer == cancelled, 1,
                                  timeout=20, msg="cancel event")
        self.assertEqual(ev[0].node, owner.node_id)
        self.receiver.wait_path(self.path(), 1, timeout=20)
        # One create event per timer, from its owner only.
        self.assertEqual(len([m for m in self.events.timer_events(tid, "create")]), 1)


class ClusterFailureTest(ClusterTestCase):

    def test_owner_down_answers_503_or_succeeds_never_hangs(self):
        cluster = self.start_cluster(3)
        ring = cluster.ring()
        self.assertTrue(ring.verified, "ring points are not XXH3-64 of <member>#<i>")
        dead, s1, s2 = cluster.node("node-3"), cluster.node("node-1"), cluster.node("node-2")
        rnd = random.Random(21)
        held = []
        for _ in range(20000):
            if len(held) >= 10:
                break
            t = random_id("held-", 10, rnd)
            if ring.owner(t) == "node-3":
                held.append(t)
        c = Client(s1.port, timeout=30)
        self.addCleanup(c.close)
        for t in held:
            self.assertCreated(c.create(timer_body("http://127.0.0.1:9/never", timeout=FAR),
                                        timer_id=t), t)
        targets = [t for t in (random_id("dn-", 10, rnd) for _ in range(5000))
                   if ring.owner(t) == "node-3"][:40]
        killed_at = time.monotonic()
        dead.kill()
        answers = []
        first_sent = None
        clients = [Client(s1.port, timeout=10), Client(s2.port, timeout=10)]
        for cl in clients:
            self.addCleanup(cl.close)
        for k, t in enumerate(targets):
            cl = clients[k % 2]
            t_send = time.monotonic()
            if first_sent is None:
                first_sent = t_send - killed_at
            try:
                if k % 2:
                    r = cl.get("/timer/" + held[k % len(held)])
                else:
                    r = cl.create(timer_body("http://127.0.0.1:9/never", timeout=FAR),
                                  timer_id=t)
            except OSError as e:
                self.fail("request %d through a survivor got no answer within 10 s: %r" % (k, e))
            took = time.monotonic() - t_send
            self.assertLess(took, 10.0)
            answers.append((r.status, r.header("x-skyring-reason"), round(took, 3)))
            if r.status >= 500:
                self.assertEqual(r.status, 503, r)
                self.assertTrue(r.header("x-skyring-reason"), r)
            else:
                self.assertIn(r.status, (200, 201, 404), r)
        statuses = collections.Counter(a[0] for a in answers)
        print("\n  owner down: first request %.3f s after the kill; answers %r; slowest %.3f s"
              % (first_sent, dict(statuses), max(a[2] for a in answers)))
        if first_sent < 0.5:
            # The member timeout is 2 s: the first requests reached a ring that still had the
            # dead owner, so they must have been refused with 503, not silently answered.
            self.assertEqual(answers[0][0], 503, answers[:3])
        # Once the survivors dropped it, everything is answered normally.
        cluster.wait_converged(["node-1", "node-2"])
        for k, t in enumerate(targets[:10]):
            r = clients[k % 2].create(timer_body("http://127.0.0.1:9/never", timeout=FAR),
                                      timer_id=t)
            self.assertIn(r.status, (201,), r)
        for k, t in enumerate(held):
            # Its timers are on the dead node's disk: the new owner does not know them.
            r = clients[k % 2].get("/timer/" + t)
            self.assertEqual(r.status, 404, r)
        # Back on its data dir, it owns (and holds) them again.
        dead.start()
        cluster.wait_converged(["node-1", "node-2", "node-3"])
        for k, t in enumerate(held):
            cl = clients[k % 2]
            wait_until(lambda: cl.state(t) == "pending", 20,
                       msg="%s pending again via a survivor (%r)" % (t, cl.get("/timer/" + t)))
        cluster.wait_settled()

    def test_bad_nats_url_is_a_one_line_error(self):
        # SPEC 1: a bad NATS URL is a clear one-line error and a non-zero exit (a valid URL
        # whose server is not up yet is not bad: the node may connect in the background).
        for url in ("not a url", "nats://127.0.0.1:99999", "http://127.0.0.1:4222"):
            with self.subTest(url=url):
                d = tempfile.mkdtemp(prefix="skyring-it-")
                self.addCleanup(shutil.rmtree, d, True)
                env = {k: v for k, v in os.environ.items() if not k.startswith("SKYRING_")}
                p = subprocess.Popen([skyring_bin(), "run", "--port", "0", "--host", "127.0.0.1",
                                      "--data-dir", d, "--nats", url],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
                try:
                    out, err = p.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    out, err = p.communicate(timeout=10)
                    self.fail("the node started with --nats %r:\n%s" % (url, err.decode()[-2000:]))
                err = err.decode("utf-8", "replace")
                self.assertNotEqual(p.returncode, 0, err)
                lines = [l for l in err.splitlines() if l.strip()]
                self.assertEqual(len(lines), 1, err)
                self.assertIn("nats", lines[0].lower())

if __name__ == "__main__":
    unittest.main()
