"""Ring changes under load (SPEC sections 5 and 6): join, graceful leave, crash and restart,
a crash in the middle of moves, a NATS restart, and two regressions of the Node.js Skyring.

Every acknowledged (201) timer is delivered exactly once and never before its due time. The
one exception is the crash exception of SPEC 3 (a crash between a successful delivery and
recording it repeats it): a repeat is allowed only for ids that reached the receiver before
the kill. Creates that got no answer or a 5xx during a ring change may or may not exist (at
most once); a 4xx is never expected.

Each test starts its own nats-server and nodes (ports and data dirs of its own).
"""

import collections
import json
import random
import signal
import socket
import struct
import threading
import time
import unittest

from cluster_harness import (NODE_SUBJECT, ClusterTestCase, Ledger, Loader, check_exactly_once,
                             create_many, random_id)
from harness import Client, now_ms, timer_body, wait_until

STOP_BOUND = 60.0  # a graceful stop with a few thousand timers to hand off


def list_ids(node, state="pending", prefix="", max_pages=400):
    c = Client(node.port, timeout=15)
    out = set()
    cursor = None
    try:
        for _ in range(max_pages):
            path = "/timer?state=%s&limit=1000" % state + ("&cursor=" + cursor if cursor else "")
            r = c.get(path)
            assert r.status == 200, r
            body = r.json()
            out |= {t["id"] for t in body["timers"] if t["id"].startswith(prefix)}
            cursor = body.get("next_cursor")
            if not cursor:
                return out
    finally:
        c.close()
    raise AssertionError("listing did not end")


class ClusterMovesTest(ClusterTestCase):

    def received_ids(self, rec, path):
        return {r.timer_id for r in rec.for_path(path)}

    def wait_acked(self, ledger, n, timeout=60.0):
        wait_until(lambda: len(ledger.acked) >= n, timeout, interval=0.05,
                   msg="%d creates acknowledged (%s)" % (n, ledger.summary()))

    def run_for(self, seconds, loader):
        """Lets the load run this long (the load is the point, not an assertion)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.assertTrue(any(t.is_alive() for t in loader.threads), "the loader ended early")
            time.sleep(0.1)

    # --------------------------------------------------------------------------- (1) join

    def test_join_under_load(self):
        cluster = self.start_cluster(3)
        sub = cluster.subscribe()
        rec = self.start_receiver()
        path = self.path()
        ledger = Ledger()
        loader = Loader(cluster.running(), rec.url(path), ledger, "j-", (1000, 8000),
                        threads_per_node=2).start()
        self.wait_acked(ledger, 200)
        n4 = cluster.add_node("node-4")
        joined_acked = len(ledger.acked)
        loader4 = Loader([n4], rec.url(path), ledger, "j4-", (1000, 8000)).start()
        cluster.wait_converged(["node-1", "node-2", "node-3", "node-4"])
        self.run_for(4.0, loader)
        self.assertTrue(loader.stop() and loader4.stop(), "clients did not finish")
        print("\n  join: %s; %d acked before the join" % (ledger.summary(), joined_acked))
        self.assertEqual(ledger.refused, {}, "creates refused with 4xx during the join")
        check_exactly_once(self, rec, path, ledger, timeout=60)
        moved_in = cluster.metric(n4, "skyring_cluster_moves_in_total")
        self.assertGreater(moved_in, 0, "node-4 took over no timer when it joined")
        moved_out = cluster.metric_sum("skyring_cluster_moves_out_total",
                                       [cluster.node("node-%d" % i) for i in (1, 2, 3)])
        self.assertGreaterEqual(moved_out, moved_in)
        sub.wait_for(lambda m: m.subject == NODE_SUBJECT and m.type == "ready" and
                     m.node == "node-4", 1, timeout=10, msg="ready event of node-4")
        cluster.wait_settled()

    # --------------------------------------------------------------------------- (2) leave

    def test_graceful_leave_under_load(self):
        cluster = self.start_cluster(3)
        sub = cluster.subscribe()
        rec = self.start_receiver()
        path = self.path()
        ledger = Ledger()
        loader = Loader(cluster.running(), rec.url(path), ledger, "l-", (1500, 9000),
                        threads_per_node=2).start()
        self.wait_acked(ledger, 300)
        leaving = cluster.node("node-2")
        pending = cluster.metric(leaving, "skyring_timers_pending")
        loader.avoid("node-2")
        t = time.monotonic()
        rc = leaving.signal_stop(signal.SIGTERM, timeout=STOP_BOUND)
        took = time.monotonic() - t
        self.assertEqual(rc, 0, "node-2 exit code after SIGTERM")
        cluster.wait_converged(["node-1", "node-3"])
        self.run_for(2.0, loader)
        self.assertTrue(loader.stop(), "clients did not finish")
        print("\n  leave: %d pending on node-2 at SIGTERM, exited in %.2f s; %s"
              % (pending, took, ledger.summary()))
        self.assertGreater(pending, 0, "node-2 held nothing to hand off")
        self.assertEqual(ledger.refused, {}, "creates refused with 4xx during the leave")
        check_exactly_once(self, rec, path, ledger, timeout=60)
        sub.wait_for(lambda m: m.subject == NODE_SUBJECT and m.type == "shutdown" and
                     m.node == "node-2", 1, timeout=10, msg="shutdown event of node-2")
        moved_in = cluster.metric_sum("skyring_cluster_moves_in_total")
        self.assertGreater(moved_in, 0, "the survivors received no timer from node-2")

    def test_last_node_keeps_its_timers(self):
        cluster = self.start_cluster(2)
        a, b = cluster.node("node-1"), cluster.node("node-2")
        ids = ["last-%02d" % i for i in range(40)]
        c = Client(a.port, timeout=30)
        for tid in ids:
            r = c.create(timer_body("http://127.0.0.1:9/never", timeout=3600_000), timer_id=tid)
            self.assertEqual(r.status, 201, r)
        c.close()
        b.stop(timeout=STOP_BOUND)  # hands its share to node-1
        cluster.wait_converged(["node-1"])
        self.assertEqual(list_ids(a, prefix="last-"), set(ids))
        a.stop(timeout=STOP_BOUND)  # the last node: keeps them in its data dir
        a.start()
        wait_until(lambda: cluster.converged(["node-1"]), 30, interval=0.1)
        self.assertEqual(list_ids(a, prefix="last-"), set(ids))

    # --------------------------------------------------------------------------- (3) crash

    def test_crash_and_restart_exactly_once(self):
        cluster = self.start_cluster(3)
        rec = self.start_receiver()
        path = self.path()
        ledger = Ledger()
        t0 = now_ms()
        plan = [("cr-%04d" % i, t0 + 2500 + i * 9500 // 450) for i in range(450)]
        create_many(cluster.running(), rec.url(path), ledger, plan)
        self.assertEqual(len(ledger.acked), len(plan), ledger.summary())
        victim = cluster.node("node-2")
        held = cluster.metric(victim, "skyring_timers_pending")
        self.assertGreater(held, 0)
        # More creates keep coming through the others during the downtime and after.
        loader = Loader([cluster.node("node-1"), cluster.node("node-3")], rec.url(path), ledger,
                        "crl-", (500, 6000), pause=0.02).start()
        wait_until(lambda: now_ms() >= t0 + 4000, 30, interval=0.05)
        victim.kill()
        killed = now_ms()
        before = self.received_ids(rec, path)
        time.sleep(3.0)  # downtime: some of its timers fall due meanwhile
        victim.start()
        restarted = now_ms()
        cluster.wait_converged(["node-1", "node-2", "node-3"])
        self.run_for(2.0, loader)
        self.assertTrue(loader.stop(), "clients did not finish")
        overdue = [t for t, due in plan if killed <= due < restarted]
        print("\n  crash: node-2 held %d, down %d ms (%d plan timers due meanwhile), %d delivered "
              "before the kill; %s" % (held, restarted - killed, len(overdue), len(before),
                                      ledger.summary()))
        self.assertEqual(ledger.refused, {})
        check_exactly_once(self, rec, path, ledger, allowed_repeats=before, timeout=60)
        cluster.wait_settled()

    # ------------------------------------------------------------------ (4) crash during moves

    def test_kill9_during_moves(self):
        cluster = self.start_cluster(3)
        rec = self.start_receiver()
        path = self.path()
        ledger = Ledger()
        total, per_node_threads = 20000, 3
        nthreads = 3 * per_node_threads
        loader = Loader(cluster.running(), rec.url(path), ledger, "mv-", (20000, 40000),
                        threads_per_node=per_node_threads,
                        max_per_thread=(total + nthreads - 1) // nthreads, timeout=30)
        t_create = time.monotonic()
        loader.start()
        self.assertTrue(loader.join(300), "20,000 creates did not finish in 300 s")
        t_create = time.monotonic() - t_create
        self.assertEqual(ledger.refused, {})
        self.assertGreaterEqual(len(ledger.acked), total - 50, ledger.summary())
        n4 = cluster.add_node("node-4")
        time.sleep(0.3)  # moves to node-4 are running now
        victim = cluster.node("node-1")
        moved_at_kill = cluster.metric(victim, "skyring_cluster_moves_out_total")
        victim.kill()
        before = self.received_ids(rec, path)
        time.sleep(1.0)
        victim.start()
        cluster.wait_converged(["node-1", "node-2", "node-3", "node-4"], timeout=60)
        cluster.wait_settled(timeout=180)
        last_due = max(ledger.acked.values())
        print("\n  kill during moves: %d created in %.1f s; node-1 had moved %d when killed; "
              "%d delivered before the kill; node-4 moves in %d; %s"
              % (len(ledger.acked), t_create, moved_at_kill, len(before),
                 cluster.metric(n4, "skyring_cluster_moves_in_total"), ledger.summary()))
        check_exactly_once(self, rec, path, ledger, allowed_repeats=before,
                           timeout=max(0, (last_due - now_ms()) / 1000) + 120, settle=3.0)
        self.assertGreater(cluster.metric(n4, "skyring_cluster_moves_in_total"), 0)

    # --------------------------------------------------------------------------- (5) NATS

    def test_nats_restart_loses_and_doubles_nothing(self):
        cluster = self.start_cluster(3)
        rec = self.start_receiver()
        path = self.path()
        ledger = Ledger()
        loader = Loader(cluster.running(), rec.url(path), ledger, "nr-", (1000, 10000),
                        threads_per_node=1, pause=0.01).start()
        self.wait_acked(ledger, 150)
        cluster.nats.stop()
        nats_down = time.monotonic()
        wait_until(lambda: all(cluster.metric(n, "skyring_nats_connected", 1) == 0
                               for n in cluster.running()), 20, interval=0.1,
                   msg="nodes notice that NATS is gone")
        time.sleep(max(0.0, 3.0 - (time.monotonic() - nats_down)))
        cluster.nats.start()
        wait_until(lambda: all(cluster.metric(n, "skyring_nats_connected") == 1
                               for n in cluster.running()), 30, interval=0.1,
                   msg="every node reconnected to NATS")
        cluster.wait_converged(["node-1", "node-2", "node-3"])
        self.run_for(2.0, loader)
        self.assertTrue(loader.stop(), "clients did not finish")
        print("\n  nats restart: %s" % ledger.summary())
        self.assertEqual(ledger.refused, {})
        check_exactly_once(self, rec, path, ledger, timeout=60)
        cluster.wait_settled()

    # ------------------------------------------------- requests during moves, retention moves

    def test_get_put_delete_keep_working_while_the_ring_changes(self):
        cluster = self.start_cluster(3)
        ring = cluster.ring()
        self.assertTrue(ring.verified, "ring points are not XXH3-64 of <member>#<i>")
        rec = self.start_receiver()
        ledger = Ledger()
        t0 = now_ms()
        ids = ["rw-%04d" % i for i in range(600)]
        plan = [(t, t0 + 20000 + i * 10) for i, t in enumerate(ids)]
        create_many(cluster.running(), rec.url(self.path("keep")), ledger, plan)
        self.assertEqual(len(ledger.acked), len(plan), ledger.summary())
        to_n4 = [t for t in ids if ring.owner_of_members(
            t, ["node-1", "node-2", "node-3", "node-4"]) == "node-4"]
        self.assertGreater(len(to_n4), 50)
        bad = []
        done = [0]
        retried = [0]
        stop = threading.Event()

        def reader(k):
            rnd = random.Random(k)
            clients = [(n.node_id, Client(n.port, timeout=15)) for n in cluster.running()]
            try:
                for _ in range(100000):
                    if stop.is_set():
                        return
                    tid = rnd.choice(to_n4 if rnd.random() < 0.7 else ids)
                    via, c = rnd.choice(clients)
                    try:
                        r = c.get("/timer/" + tid)
                        # 503 + Retry-After is the contract's retryable answer (a node still
                        # joining, a timer mid-move): a client retries; the answer after that
                        # must be right. Bounded: 50 tries.
                        for _ in range(50):
                            if r.status != 503 or not r.header("retry-after"):
                                break
                            retried[0] += 1
                            time.sleep(0.02)
                            r = c.get("/timer/" + tid)
                        if r.status != 200 or r.json()["state"] != "pending":
                            bad.append((tid, "via " + via, "owner before " + ring.owner(tid),
                                        r.status, r.body[:80]))
                    except OSError as e:
                        bad.append((tid, "via " + via, "no answer", repr(e)))
                        c.close()
                    done[0] += 1
            finally:
                for _, c in clients:
                    c.close()

        readers = [threading.Thread(target=reader, args=(k,), daemon=True) for k in range(3)]
        for t in readers:
            t.start()
        wait_until(lambda: done[0] > 100, 30, interval=0.05)
        cluster.add_node("node-4")
        cluster.wait_converged(["node-1", "node-2", "node-3", "node-4"])
        cluster.wait_settled()
        reads_during = done[0]
        stop.set()
        for t in readers:
            t.join(30)
        self.assertTrue(set(to_n4) <= list_ids(cluster.node("node-4"), prefix="rw-"))
        # PUT and DELETE through every node after the moves: the new owner answers.
        nodes = cluster.running()
        cls = [Client(n.port, timeout=30) for n in nodes]
        for cl in cls:
            self.addCleanup(cl.close)
        cancelled, replaced = to_n4[0::2], to_n4[1::2]
        for k, tid in enumerate(cancelled):
            r = cls[k % len(cls)].delete("/timer/" + tid)
            self.assertEqual(r.status, 202, (tid, r))
        new_at = {}
        for k, tid in enumerate(replaced):
            new_at[tid] = now_ms() + 3000 + k * 5
            r = cls[k % len(cls)].put(
                "/timer/" + tid, timer_body(rec.url(self.path("new")), at=new_at[tid],
                                            data={"id": tid}))
            self.assertEqual(r.status, 200, (tid, r))
        # The replaced ones fire once, at their new time; then a leave; the rest fire once.
        got = rec.wait_path(self.path("new"), len(replaced), timeout=40)
        self.assertEqual(sorted(r.timer_id for r in got), sorted(replaced))
        for r in got:
            self.assertGreaterEqual(r.time * 1000, new_at[r.timer_id])
        cls[3].close()
        cluster.node("node-4").stop(timeout=STOP_BOUND)
        cluster.wait_converged(["node-1", "node-2", "node-3"])
        for tid in cancelled[:20]:
            self.assertEqual(cls[0].state(tid), "cancelled", tid)
        rest = Ledger()
        for tid, at in plan:
            if tid not in cancelled and tid not in replaced:
                rest.record(tid, at, 201)
        check_exactly_once(self, rec, self.path("keep"), rest, timeout=60)
        self.assertEqual(len(rec.for_path(self.path("new"))), len(replaced))
        # Checked last, so that the checks above still run when this one fails.
        self.assertEqual(bad[:10], [], "GET through some node failed while node-4 joined "
                                       "(%d of %d reads)" % (len(bad), reads_during))

    def test_retention_records_move_with_their_ids(self):
        cluster = self.start_cluster(3)
        ring = cluster.ring()
        self.assertTrue(ring.verified, "ring points are not XXH3-64 of <member>#<i>")
        rec = self.start_receiver()
        path = self.path()
        rnd = random.Random(9)
        four = ["node-1", "node-2", "node-3", "node-4"]
        ids = []
        for _ in range(20000):
            if len(ids) >= 40:
                break
            t = random_id("ret-", 10, rnd)
            if ring.owner_of_members(t, four) == "node-4":
                ids.append(t)
        self.assertEqual(len(ids), 40)
        at = now_ms() + 1000
        bodies = {t: timer_body(rec.url(path), at=at, data={"id": t}) for t in ids}
        c = Client(cluster.node("node-1").port, timeout=30)
        self.addCleanup(c.close)
        for t in ids:
            self.assertEqual(c.create(bodies[t], timer_id=t).status, 201)
        rec.wait_path(path, len(ids), timeout=30)
        for t in ids:
            wait_until(lambda: c.state(t) == "succeeded", 20, msg="%s succeeded" % t)
        cluster.add_node("node-4")
        cluster.wait_converged(four)
        cluster.wait_settled()
        for n in cluster.running():
            cl = Client(n.port, timeout=30)
            try:
                for t in ids[:10]:
                    self.assertEqual(cl.state(t), "succeeded", (n.node_id, t))
                    # Same id, same body: the same 201, nothing new; another body: 409.
                    self.assertEqual(cl.create(bodies[t], timer_id=t).status, 201)
                    r = cl.create(dict(bodies[t], data="other"), timer_id=t)
                    self.assertEqual(r.status, 409, (n.node_id, t, r))
            finally:
                cl.close()
        self.assertTrue(set(ids) <= list_ids(cluster.node("node-4"), "succeeded", "ret-"),
                        "the retention records did not move to node-4")
        time.sleep(1.5)
        counts = collections.Counter(r.timer_id for r in rec.for_path(path))
        self.assertEqual({t: n for t, n in counts.items() if n != 1}, {})

    # --------------------------------------------------------------------------- (6) regressions

    def test_timers_due_during_rebalance_fire_once_regression_34(self):
        cluster = self.start_cluster(3)
        rec = self.start_receiver()
        path = self.path()
        ledger = Ledger()
        # Batch 1: due right when node-4 joins.
        t_join = now_ms() + 12000
        plan1 = [("r34a-%04d" % i, t_join - 200 + (i * 1400) // 1500) for i in range(1500)]
        create_many(cluster.running(), rec.url(path), ledger, plan1)
        self.assertEqual(len(ledger.acked), len(plan1), ledger.summary())
        self.assertLess(now_ms(), t_join - 500, "creating 1,500 timers took too long to test")
        wait_until(lambda: now_ms() >= t_join - 400, 20, interval=0.01)
        n4 = cluster.add_node("node-4")
        cluster.wait_converged(["node-1", "node-2", "node-3", "node-4"])
        cluster.wait_settled()
        # Batch 2: due right when node-4 leaves.
        t_leave = now_ms() + 12000
        plan2 = [("r34b-%04d" % i, t_leave - 200 + (i * 1400) // 1500) for i in range(1500)]
        create_many(cluster.running(), rec.url(path), ledger, plan2)
        self.assertLess(now_ms(), t_leave - 500, "creating 1,500 timers took too long to test")
        wait_until(lambda: now_ms() >= t_leave - 100, 20, interval=0.01)
        held = cluster.metric(n4, "skyring_timers_pending")
        n4.stop(timeout=STOP_BOUND)
        print("\n  #34: node-4 held %d of batch 2 when it left; %s" % (held, ledger.summary()))
        check_exactly_once(self, rec, path, ledger, timeout=60)

    def test_timer_handed_off_twice_keeps_its_due_time_regression_22(self):
        cluster = self.start_cluster(3)
        ring = cluster.ring()
        self.assertTrue(ring.verified, "ring points are not XXH3-64 of <member>#<i>")
        rec = self.start_receiver()
        path = self.path()
        ledger = Ledger()
        rnd = random.Random(22)
        chain = []  # node-1 -> node-2 -> node-3
        for _ in range(50000):
            if len(chain) >= 30:
                break
            t = random_id("r22-", 10, rnd)
            if ring.owner(t) == "node-1" and ring.owner_of_members(t, ["node-2", "node-3"]) == \
                    "node-2":
                chain.append(t)
        self.assertEqual(len(chain), 30)
        due = now_ms() + 25000
        plan = [(t, due + k * 50) for k, t in enumerate(chain)]
        plan += [("r22x-%02d" % k, due + k * 50) for k in range(30)]
        create_many([cluster.node("node-3")], rec.url(path), ledger, plan)
        self.assertEqual(len(ledger.acked), len(plan), ledger.summary())
        self.assertTrue(set(chain) <= list_ids(cluster.node("node-1"), prefix="r22-"))
        c3 = Client(cluster.node("node-3").port, timeout=30)
        self.addCleanup(c3.close)
        cluster.node("node-1").stop(timeout=STOP_BOUND)
        cluster.wait_converged(["node-2", "node-3"])
        cluster.wait_settled()
        self.assertTrue(set(chain) <= list_ids(cluster.node("node-2"), prefix="r22-"),
                        "the timers of node-1 did not move to node-2")
        cluster.node("node-2").stop(timeout=STOP_BOUND)
        cluster.wait_converged(["node-3"])
        cluster.wait_settled()
        self.assertTrue(set(chain) <= list_ids(cluster.node("node-3"), prefix="r22-"),
                        "the timers of node-2 did not move to node-3")
        for tid, at in plan:
            t = c3.timer(tid)
            self.assertIsNotNone(t, tid)
            self.assertEqual((t["state"], t["due"]), ("pending", at), t)
        self.assertLess(now_ms(), due - 1000, "two handoffs of 60 timers took over 24 s")
        check_exactly_once(self, rec, path, ledger, timeout=60, late_margin_ms=5000)

    # ------------------------------------------------------- moves a node may or may not hold

    def move_batch(self, token, count=0):
        """A POST /cluster/moves body with no records: what the receiver says of the token."""
        return b"SKM1" + struct.pack("<I", len(token)) + token.encode() + struct.pack("<I", count)

    def test_a_leaving_node_takes_no_new_moves(self):
        """Whatever a leaving node stored, its handoff takes on; a move that came after would
        stay behind in its data dir. So it refuses new moves for sure ("not-held"), and the
        sender plans them again instead of waiting for a node that is gone."""
        cluster = self.start_cluster(2)
        a, b = cluster.node("node-1"), cluster.node("node-2")
        ids = self.create_far(a, "lv-", 40)
        c = Client(a.port, timeout=30)
        hdrs = {"Content-Type": "application/octet-stream", "x-skyring-cluster": cluster.name}
        r = c.post("/cluster/moves", self.move_batch("tok-active"), headers=hdrs)
        self.assertEqual((r.status, json.loads(r.body)), (200, {"outcomes": ""}), r)
        c.close()
        held = cluster.metric(a, "skyring_timers_pending")
        self.assertGreater(held, 0)
        # node-2 frozen: node-1's handoff cannot end, so node-1 stays in the leaving state.
        b.proc.send_signal(signal.SIGSTOP)
        resumed = [False]

        def resume():
            if not resumed[0]:
                resumed[0] = True
                b.proc.send_signal(signal.SIGCONT)
        self.addCleanup(resume)
        stop_error = []

        def stop_a():
            try:
                a.stop(timeout=STOP_BOUND)
            except BaseException as e:  # reported by the main thread
                stop_error.append(e)
        stopper = threading.Thread(target=stop_a, daemon=True)
        stopper.start()

        def leaving():
            info = cluster.info(a)
            return info is not None and any(
                m["id"] == "node-1" and m["state"] == "leaving" for m in info["members"])
        wait_until(leaving, 30, interval=0.05, msg="node-1 leaving")
        c = Client(a.port, timeout=30)
        r = c.post("/cluster/moves", self.move_batch("tok-leaving"), headers=hdrs)
        c.close()
        self.assertEqual(r.status, 503, r)
        self.assertEqual(r.header("x-skyring-move"), "not-held", r)
        self.assertIn("x-skyring-reason", r.headers)
        resume()
        stopper.join(STOP_BOUND + 10)
        self.assertFalse(stopper.is_alive(), "node-1 did not stop")
        self.assertEqual(stop_error, [])
        cluster.wait_converged(["node-2"])
        self.assertEqual(list_ids(b, prefix="lv-"), set(ids))

    def test_a_refused_resend_keeps_the_move_open(self):
        """A move whose first send had no answer may be stored at the destination already: a
        refusal of a resend ("refused", not "not-held") or a connect error says nothing of the
        first send, so the marks stay and the same token goes again until an answer that
        knows it. (The node used to end the move on such a refusal and plan the timers anew
        under a new token: two holders if the first send had been stored.)"""
        cluster = self.start_cluster(1)
        a = cluster.node("node-1")
        ids = self.create_far(a, "rs-", 40)

        def answer(n, count):  # no answer to the first send, two plain refusals, then stored
            if n == 1:
                return None
            if n <= 3:
                return 503, {"x-skyring-move": "refused"}, '{"error":"busy","reason":"test"}'
            return 200, {}, json.dumps({"outcomes": "S" * count}, separators=(",", ":"))
        member = TestMember(self, cluster, answer)
        wait_until(lambda: len(member.seen) >= 4 and
                   cluster.metric(a, "skyring_cluster_moving") == 0,
                   30, interval=0.05, msg="the move to the test member ended")
        self.assertEqual(len({t for t, _ in member.seen}), 1,
                         "the move was planned anew: %r" % member.seen)
        moved = member.seen[-1][1]
        self.assertGreater(moved, 0)
        wait_until(lambda: cluster.metric(a, "skyring_timers_pending") == len(ids) - moved, 10,
                   interval=0.05, msg="node-1 deleted what the test member stored")
        self.assertGreaterEqual(cluster.metric(a, "skyring_cluster_move_unknown_total"), 3)

    def test_an_unknown_move_to_a_node_that_left_after_its_handoff_goes_to_the_owners(self):
        """A node whose "gone" says its handoff was complete holds nothing, and stored no move
        once it began leaving: a move to it whose outcome is unknown goes, same token and marks
        kept, to the timers' new owners (or stays with the sender if that is the owner), and
        every timer ends up on exactly one node."""
        cluster = self.start_cluster(2)
        a, b = cluster.node("node-1"), cluster.node("node-2")
        ids = self.create_far(a, "lg-", 60)
        member = TestMember(self, cluster, lambda n, count: None)  # never answers
        for n in (a, b):
            wait_until(lambda: cluster.metric(n, "skyring_cluster_moves_unresolved") >= 1, 30,
                       interval=0.05, msg="%s has a move with an unknown outcome" % n.node_id)
        member.gone(handed_over=True)
        for n in (a, b):
            wait_until(lambda: cluster.metric(n, "skyring_cluster_moves_unresolved") == 0 and
                       cluster.metric(n, "skyring_cluster_moving") == 0, 30, interval=0.05,
                       msg="%s ended its moves" % n.node_id)
        cluster.wait_settled()
        on_a, on_b = list_ids(a, prefix="lg-"), list_ids(b, prefix="lg-")
        self.assertEqual(on_a & on_b, set(), "timers on both nodes")
        self.assertEqual(on_a | on_b, set(ids))
        ring = cluster.ring()
        self.assertTrue(all(ring.owner(t) == "node-1" for t in on_a))
        self.assertTrue(all(ring.owner(t) == "node-2" for t in on_b))

    def create_far(self, node, prefix, n):
        c = Client(node.port, timeout=30)
        ids = ["%s%02d" % (prefix, i) for i in range(n)]
        for tid in ids:
            r = c.create(timer_body("http://127.0.0.1:9/never", timeout=3600_000), timer_id=tid)
            self.assertEqual(r.status, 201, r)
        c.close()
        return ids


class TestMember:
    """A ring member that is the test: heartbeats on NATS with its own HTTP server's address,
    records (token, record count) of every POST /cluster/moves and answers the n-th one (from
    1) with answer(n, count): (status, headers, body), or None to close without an answer."""

    def __init__(self, case, cluster, answer):
        self.cluster = cluster
        self.answer = answer
        self.seen = []
        self.done = threading.Event()
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.srv.settimeout(0.2)
        self.nats = cluster.subscribe(subjects=())
        self.beat = {"v": 1, "type": "heartbeat", "id": "test-member", "state": "active",
                     "address": "127.0.0.1:%d" % self.srv.getsockname()[1], "incarnation": 1,
                     "settled": "0"}
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self.serve, self.beats)]
        for t in self.threads:
            t.start()
        case.addCleanup(self.close)

    def gone(self, handed_over):
        self.done.set()
        self.threads[1].join(5)
        msg = {"v": 1, "type": "gone", "id": "test-member", "incarnation": 1,
               "handed_over": handed_over}
        self.nats.publish(self.subject(), json.dumps(msg))

    def close(self):
        self.done.set()
        for t in self.threads:
            t.join(5)
        self.srv.close()

    def subject(self):
        return "skyring.%s.members" % self.cluster.name

    def beats(self):
        while not self.done.is_set():
            self.nats.publish(self.subject(), json.dumps(self.beat))
            self.done.wait(0.3)

    @staticmethod
    def read_request(conn):
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 1 << 20:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v.strip())
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            body += chunk
        (n,) = struct.unpack_from("<I", body, 4)
        (count,) = struct.unpack_from("<I", body, 8 + n)
        return body[8:8 + n].decode(), count

    def serve(self):
        deadline = time.monotonic() + 120
        while not self.done.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.srv.accept()
            except (socket.timeout, OSError):
                continue
            conn.settimeout(10)
            with conn:
                while True:
                    try:
                        req = self.read_request(conn)
                    except OSError:
                        break
                    if req is None:
                        break
                    self.seen.append(req)
                    ans = self.answer(len(self.seen), req[1])
                    if ans is None:
                        break  # closed without an answer: the outcome is unknown
                    status, headers, body = ans
                    head = "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n" % status
                    head += "".join("%s: %s\r\n" % kv for kv in headers.items())
                    head += "Content-Length: %d\r\n\r\n" % len(body)
                    conn.sendall(head.encode() + body.encode())

if __name__ == "__main__":
    unittest.main()
