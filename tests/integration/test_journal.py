"""The journal with the real binary: runs and resources are recorded, `ephrun ls`,
`ephrun history` and `ephrun reap` (with --dry-run, --json, --older-than), and a run
killed with SIGKILL leaves an orphan that ls shows and reap removes.

Resources come from a provider test double (an "instance" is a JSON file, written by
tests/integration/providers/fake.lua on EPHRUN_PATH) and from the local provider."""
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import unittest

from common import BIN, RECIPES, env, wait_ready

LAUNCH = os.path.join(RECIPES, "journal_launch.lua")
FAKE_PATH = os.path.dirname(os.path.abspath(__file__))  # holds providers/fake.lua


class Journal(unittest.TestCase):
    def setUp(self):
        self.home = tempfile.mkdtemp(prefix="ephrun-journal-")
        self.cloud = os.path.join(self.home, "fake-cloud")
        os.mkdir(self.cloud)
        self.env = env(EPHRUN_HOME=os.path.join(self.home, "state"), EPHRUN_PATH=FAKE_PATH,
                       FAKE_CLOUD_DIR=self.cloud)
        self.env.pop("EPHRUN_LUA_DIR", None)

    def tearDown(self):
        # Whatever a test left behind (local instances included) goes.
        self.ephrun("reap", "--yes")
        shutil.rmtree(self.home, ignore_errors=True)

    def ephrun(self, *args, timeout=60, cwd=None):
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout,
                              env=self.env, cwd=cwd, stdin=subprocess.DEVNULL)

    def ok(self, *args, **kw):
        r = self.ephrun(*args, **kw)
        self.assertEqual(r.returncode, 0, "ephrun %s\nstdout: %s\nstderr: %s" % (" ".join(args), r.stdout, r.stderr))
        return r

    def ls_json(self, *extra):
        return json.loads(self.ok("ls", "--json", *extra).stdout)

    def fake_instances(self):
        return sorted(f[:-5] for f in os.listdir(self.cloud) if f.endswith(".json"))

    def launch_fake(self, *params):
        r = self.ok(LAUNCH, "provider=fake", "via=direct", *params)
        return r.stdout.split("READY ", 1)[1].split()[0]

    def test_empty_journal(self):
        r = self.ok("ls")
        self.assertIn("No live resources", r.stdout)
        self.assertEqual(self.ls_json()["resources"], [])
        self.assertIn("No runs recorded", self.ok("history").stdout)
        self.assertEqual(json.loads(self.ok("history", "--json").stdout), {"runs": []})
        self.assertIn("Nothing to reap", self.ok("reap").stdout)

    def test_journal_file_is_private(self):
        self.launch_fake()
        state = os.path.join(self.home, "state")
        self.assertEqual(os.stat(state).st_mode & 0o777, 0o700)
        self.assertEqual(os.stat(os.path.join(state, "journal.sqlite")).st_mode & 0o777, 0o600)

    def test_history_records_runs_with_status(self):
        self.launch_fake()
        failing = os.path.join(RECIPES, "failing.lua")
        r = self.ephrun(failing, "marker=" + os.path.join(self.home, "m"))
        self.assertEqual(r.returncode, 1)
        # Dry runs are not journalled.
        self.ok(LAUNCH, "provider=fake", "via=direct", "--dry-run")
        runs = json.loads(self.ok("history", "--json").stdout)["runs"]
        self.assertEqual([x["recipe"] for x in runs], ["failing", "journal-launch"])
        self.assertEqual([x["status"] for x in runs], ["failed", "ok"])
        self.assertIn("the build broke", runs[0]["detail"])
        for x in runs:
            self.assertGreaterEqual(x["ended"], x["started"])
            self.assertEqual(len(x["params_hash"]), 16)
        text = self.ok("history").stdout
        self.assertIn("RUN", text.splitlines()[0])
        self.assertIn("failing", text)
        self.assertEqual(self.fake_instances(), [], "the run destroyed its instance")
        self.assertEqual(self.ls_json()["resources"], [])
        everything = self.ls_json("all=true")["resources"]
        self.assertEqual([x["status"] for x in everything], ["destroyed"])

    def test_an_interrupted_run_is_recorded_as_such(self):
        p = subprocess.Popen([BIN, os.path.join(RECIPES, "signals.lua"), "marker=" + os.path.join(self.home, "m"),
                              "mode=sleep"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=self.env)
        wait_ready(p)
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=30)
        self.assertEqual(p.returncode, 130)
        [run] = json.loads(self.ok("history", "--json").stdout)["runs"]
        self.assertEqual(run["status"], "interrupted")
        self.assertIn("SIGINT", run["detail"])
        self.assertIn("interrupted (SIGINT", self.ok("history").stdout)

    def test_same_params_same_hash(self):
        self.launch_fake("ttl=2h")
        self.launch_fake("ttl=2h")
        self.launch_fake("ttl=3h")
        hashes = [x["params_hash"] for x in json.loads(self.ok("history", "--json").stdout)["runs"]]
        self.assertEqual(hashes[1], hashes[2])
        self.assertNotEqual(hashes[0], hashes[1])

    def test_ls_shows_left_resources_with_cost_and_reap_removes_them(self):
        inst = self.launch_fake("keep=true", "price=36", "ttl=2h")
        time.sleep(1.1)
        data = self.ls_json()
        [res] = data["resources"]
        self.assertEqual(res["id"], inst)
        self.assertEqual(res["provider"], "fake")
        self.assertEqual(res["recipe"], "journal-launch")
        self.assertEqual(res["state"], "orphaned")  # its run ended without destroying it
        self.assertGreater(res["cost"], 0.01)  # $36/h for more than a second
        self.assertAlmostEqual(data["total_cost"], res["cost"], places=6)
        self.assertGreater(res["ttl_left"], 7000)
        text = self.ok("ls").stdout
        for word in ("PROVIDER", "TTL LEFT", "COST", inst, "orphaned", "so far", "ephrun reap"):
            self.assertIn(word, text)

        # --dry-run: says what it would remove, removes nothing.
        r = self.ok("reap", "--dry-run")
        self.assertIn("Would destroy", r.stdout)
        self.assertIn(inst, r.stdout)
        self.assertIn("dry run", r.stdout)
        self.assertEqual(self.fake_instances(), [inst])
        self.assertEqual(len(self.ls_json()["resources"]), 1)

        # --older-than: too young to reap.
        r = self.ok("reap", "--older-than", "1h", "--yes")
        self.assertIn("Nothing to reap", r.stdout)
        self.assertEqual(self.fake_instances(), [inst])

        # Without --yes and without a terminal it refuses.
        r = self.ephrun("reap")
        self.assertEqual(r.returncode, 1)
        self.assertIn("--yes", r.stderr)
        self.assertEqual(self.fake_instances(), [inst])

        r = self.ok("reap", "--older-than", "1s", "--yes")
        self.assertIn("destroyed fake " + inst, r.stdout)
        self.assertEqual(self.fake_instances(), [])
        self.assertEqual(self.ls_json()["resources"], [])
        self.assertIn("Nothing to reap", self.ok("reap", "--yes").stdout)

    def test_reap_finds_instances_by_tag(self):
        def plant(name, run, expires):
            with open(os.path.join(self.cloud, name + ".json"), "w") as f:
                json.dump({"id": name, "state": "running", "created": time.time() - 60,
                           "tags": {"ephrun-run": run, "ephrun-recipe": "elsewhere",
                                    "ephrun-expires": expires}}, f)
        plant("expired-one", "20200101-000000-aaaa", "2020-01-01T01:00:00Z")
        plant("unknown-run", "20200101-000000-bbbb", "2999-01-01T00:00:00Z")
        with open(os.path.join(self.cloud, "not-ours.json"), "w") as f:
            json.dump({"id": "not-ours", "state": "running", "tags": {}}, f)
        # No fake resource is journalled: name the provider to scan its tags.
        self.assertNotIn("expired-one", self.ok("reap", "--dry-run").stdout)
        r = self.ok("reap", "--dry-run", "providers=fake")
        self.assertIn("asking fake for its instances", r.stderr)  # says what it waits for
        self.assertIn("expired-one", r.stdout)
        self.assertIn("tags", r.stdout)
        self.assertNotIn("unknown-run", r.stdout)  # maybe another machine's run: left alone
        self.assertNotIn("not-ours", r.stdout)
        r = self.ok("reap", "--yes", "providers=fake")
        self.assertIn("destroyed fake expired-one (expired)", r.stdout)
        self.assertEqual(self.fake_instances(), ["not-ours", "unknown-run"])

    def test_reap_says_what_it_waits_for(self):
        """Issue 10: a provider whose API does not answer is named while reap waits for it."""
        go = os.path.join(self.home, "go")
        p = subprocess.Popen([BIN, "reap", "--dry-run", "providers=fake"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=dict(self.env, FAKE_LIST_WAIT=go))
        try:
            for token in ("asking fake for its instances", "still waiting for fake's instance list"):
                for line in p.stderr:
                    if token in line:
                        break
                else:
                    self.fail("reap never said %r" % token)
        finally:
            open(go, "w").close()
        out, _ = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0)
        self.assertIn("Nothing to reap", out)

    def test_ctrl_c_while_reap_waits_for_a_provider_stops_it(self):
        inst = self.launch_fake("keep=true")  # journalled, its run over: an orphan to reap
        go = os.path.join(self.home, "go")
        p = subprocess.Popen([BIN, "reap", "--yes", "providers=fake"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=dict(self.env, FAKE_LIST_WAIT=go))
        for line in p.stderr:
            if "asking fake for its instances" in line:
                break
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        open(go, "w").close()
        self.assertEqual(p.returncode, 130, err)
        self.assertNotIn("destroyed", out)
        self.assertEqual(self.fake_instances(), [inst], "reap went on destroying after Ctrl-C")

    def test_sigkill_leaves_an_orphan_that_ls_shows_and_reap_removes(self):
        if not shutil.which("sshd") and not os.path.exists("/usr/sbin/sshd"):
            self.skipTest("no sshd for the local provider")
        p = subprocess.Popen([BIN, LAUNCH, "provider=local", "hold=60s"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=self.env)
        line = p.stdout.readline()
        if "READY" not in line:
            p.kill()
            self.fail("launch failed: %s %s" % (line, p.stderr.read()))
        inst = line.split()[1]
        [res] = self.ls_json()["resources"]
        self.assertEqual(res["state"], "running")  # its run is alive: not reaped
        self.assertIn("Nothing to reap", self.ok("reap", "--yes").stdout)

        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        p.stdout.close()
        p.stderr.close()
        [res] = self.ls_json()["resources"]
        self.assertEqual(res["id"], inst)
        self.assertEqual(res["state"], "orphaned")
        self.assertIn("orphaned", self.ok("ls").stdout)
        [run] = json.loads(self.ok("history", "--json").stdout)["runs"]
        self.assertEqual(run["status"], "died")
        inst_dir = os.path.join(self.home, "state", "local", inst)
        self.assertTrue(os.path.isdir(inst_dir))

        runs = os.path.join(self.home, "state", "runs")
        self.assertEqual(len(os.listdir(runs)), 1)
        r = self.ok("reap", "--yes", timeout=120)
        self.assertIn("destroyed local " + inst, r.stdout)
        self.assertEqual(self.ls_json()["resources"], [])
        self.assertFalse(os.path.exists(inst_dir))
        self.assertEqual(os.listdir(runs), [], "reap leaves the killed run's key directory")
        out = subprocess.run(["pgrep", "-f", inst], capture_output=True, text=True).stdout
        self.assertEqual(out, "", "a process of the instance outlived reap")

    def test_killed_mid_create_the_intent_and_tags_find_the_instance(self):
        p = subprocess.Popen([BIN, LAUNCH, "provider=fake", "via=direct"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=dict(self.env, FAKE_HANG_AFTER_CREATE="1"))
        wait_ready(p, token="CREATED")
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=10)
        [inst] = self.fake_instances()
        [res] = self.ls_json()["resources"]
        self.assertEqual(res["status"], "pending")  # the intent was written before the create
        self.assertNotIn("id", res)
        self.assertEqual(res["state"], "orphaned")
        r = self.ok("reap", "--yes")
        self.assertIn("destroyed fake " + inst, r.stdout)
        self.assertIn("tags", r.stdout)
        self.assertEqual(self.fake_instances(), [])
        self.assertEqual(self.ls_json()["resources"], [])
        [res] = self.ls_json("all=true")["resources"]
        self.assertEqual(res["status"], "destroyed")

    def test_an_intent_that_never_created_anything_is_marked_failed(self):
        p = subprocess.Popen([BIN, LAUNCH, "provider=fake", "via=direct"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=dict(self.env, FAKE_HANG_AFTER_CREATE="1"))
        wait_ready(p, token="CREATED")
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=10)
        for f in os.listdir(self.cloud):  # as if the cloud had refused the create
            os.remove(os.path.join(self.cloud, f))
        r = self.ok("reap", "--dry-run")
        self.assertIn("would mark journal entry", r.stdout)
        self.assertEqual(len(self.ls_json()["resources"]), 1)
        r = self.ok("reap", "--yes")
        self.assertIn("never completed", r.stdout)
        self.assertEqual(self.ls_json()["resources"], [])
        [res] = self.ls_json("all=true")["resources"]
        self.assertEqual(res["status"], "failed")

    def test_parallel_first_runs_all_journalled(self):
        """8 runs started together on a fresh EPHRUN_HOME, 20 times: every one is journalled
        (SQLite could refuse a second process switching a new file to WAL, and 16-bit run ids
        collided)."""
        for trial in range(20):
            home = os.path.join(self.home, "p%d" % trial)
            cloud = os.path.join(home, "cloud")
            os.makedirs(cloud)
            e = dict(self.env, EPHRUN_HOME=os.path.join(home, "state"), FAKE_CLOUD_DIR=cloud)
            procs = [subprocess.Popen([BIN, LAUNCH, "provider=fake", "via=direct"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, env=e) for _ in range(8)]
            for p in procs:
                _, err = p.communicate(timeout=60)
                self.assertEqual(p.returncode, 0, "trial %d: %s" % (trial, err))
                self.assertNotIn("journal", err, "trial %d" % trial)
            r = subprocess.run([BIN, "history", "--json", "limit=0"], capture_output=True, text=True, env=e)
            self.assertEqual(r.returncode, 0, r.stderr)
            runs = json.loads(r.stdout)["runs"]
            self.assertEqual(len(runs), 8, "trial %d" % trial)
            self.assertEqual([x["status"] for x in runs], ["ok"] * 8, "trial %d: %s" % (trial, runs))
            self.assertEqual(os.listdir(cloud), [])

    def test_a_run_that_cannot_journal_does_nothing(self):
        state = os.path.join(self.home, "state")
        os.makedirs(state)
        with open(os.path.join(state, "journal.sqlite"), "w") as f:
            f.write("this is not a database\n" * 100)
        marker = os.path.join(self.home, "m")
        r = self.ephrun(os.path.join(RECIPES, "failing.lua"), "marker=" + marker)
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot record this run in the journal", r.stderr)
        self.assertIn("Nothing was started", r.stderr)
        self.assertFalse(os.path.exists(marker), "the recipe's body ran without a journal")
        r = self.ephrun(LAUNCH, "provider=fake", "via=cloud")
        self.assertEqual(r.returncode, 1)
        self.assertNotIn("READY", r.stdout)
        self.assertEqual(self.fake_instances(), [])

    def journal_file(self):
        return os.path.join(self.home, "state", "journal.sqlite")

    def test_journal_locked_after_create_the_instance_is_destroyed_and_named(self):
        go = os.path.join(self.home, "go")
        p = subprocess.Popen([BIN, LAUNCH, "provider=fake", "via=cloud"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env=dict(self.env, FAKE_WAIT_AFTER_CREATE=go, EPHRUN_JOURNAL_TIMEOUT="1"))
        inst = wait_ready(p, token="CREATED").split()[1]
        # Another process holds the journal's write lock from now until the run is over.
        db = sqlite3.connect(self.journal_file(), timeout=30, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        open(go, "w").close()
        try:
            out, err = p.communicate(timeout=60)
        finally:
            db.execute("ROLLBACK")
            db.close()
        self.assertEqual(p.returncode, 1, err)
        self.assertNotIn("READY", out)
        self.assertIn("cannot record fake instance %s" % inst, err)
        self.assertIn("destroyed fake instance %s" % inst, err)
        self.assertEqual(self.fake_instances(), [], "the instance outlived the run")

    def test_kept_instance_survives_reap_until_asked_or_expired(self):
        r = self.ok(LAUNCH, "provider=fake", "via=cloud", "keep=true", "ttl=2h")
        inst = r.stdout.split("READY ", 1)[1].split()[0]
        self.assertIn("KEPT fake instance " + inst, r.stderr)
        [res] = self.ls_json()["resources"]
        self.assertEqual((res["id"], res["state"], res["status"]), (inst, "kept", "kept"))
        self.assertIn("kept (until ", self.ok("ls").stdout)
        self.assertIn("Nothing to reap", self.ok("reap", "--yes").stdout)
        self.assertEqual(self.fake_instances(), [inst])
        # Found by its tags alone (the journal forgot it), it is still kept.
        r = self.ok("reap", "--yes", "providers=fake")
        self.assertEqual(self.fake_instances(), [inst])
        runs = os.path.join(self.home, "state", "runs")
        self.assertEqual(len(os.listdir(runs)), 1, "a kept instance keeps its run's key")
        self.assertEqual(self.ephrun("ls", "--kept").returncode, 2)
        r = self.ok("reap", "--yes", "--kept")
        self.assertIn("destroyed fake %s (kept)" % inst, r.stdout)
        self.assertEqual(self.fake_instances(), [])
        self.assertEqual(os.listdir(runs), [], "reap leaves the run's key directory")

    def test_a_kept_instance_launched_second_keeps_the_runs_key(self):
        recipe = os.path.join(self.home, "two.lua")
        with open(recipe, "w") as f:
            f.write('local ephrun = require "ephrun"\n'
                    'return ephrun.recipe { name = "two", run = function()\n'
                    '  local cloud = ephrun.provider("fake")\n'
                    '  local a <close> = cloud:launch { ttl = "1h" }\n'
                    '  local b = cloud:launch { ttl = "1h", keep = true }\n'
                    '  print("KEPT-ID " .. b.id)\n'
                    'end }\n')
        r = self.ok(recipe)
        kept = r.stdout.split("KEPT-ID ", 1)[1].split()[0]
        self.assertEqual(self.fake_instances(), [kept])
        runs = os.path.join(self.home, "state", "runs")
        [run] = os.listdir(runs)
        self.assertTrue(os.path.exists(os.path.join(runs, run, "id_ed25519")), "the kept instance's key is gone")
        self.ok("reap", "--yes", "kept=true")
        self.assertEqual(self.fake_instances(), [])
        self.assertEqual(os.listdir(runs), [])

    def test_an_expired_kept_instance_is_reaped(self):
        r = self.ok(LAUNCH, "provider=fake", "via=cloud", "keep=true", "ttl=1s")
        inst = r.stdout.split("READY ", 1)[1].split()[0]
        deadline = time.monotonic() + 30
        while self.ls_json()["resources"][0]["state"] != "expired":
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.1)
        r = self.ok("reap", "--yes")
        self.assertIn("destroyed fake %s (expired)" % inst, r.stdout)
        self.assertEqual(self.fake_instances(), [])

    def test_kept_line_gives_the_whole_ssh_command(self):
        if not os.path.exists("/usr/sbin/sshd"):
            self.skipTest("no sshd for the local provider")
        r = self.ok(LAUNCH, "provider=local", "keep=true", "ttl=10m")
        m = re.search(r"Log in: (.*?)   Remove it:", r.stderr)
        self.assertTrue(m, r.stderr)
        cmd = m.group(1)
        for part in ("-i ", "StrictHostKeyChecking=yes", "UserKnownHostsFile=", "-p ", "@127.0.0.1"):
            self.assertIn(part, cmd)
        who = subprocess.run(cmd + " -o BatchMode=yes echo logged-in", shell=True, capture_output=True,
                             text=True, timeout=30, stdin=subprocess.DEVNULL)
        self.assertEqual(who.returncode, 0, who.stderr)
        self.assertIn("logged-in", who.stdout)
        r = self.ok("reap", "--yes", "kept=true", timeout=120)
        self.assertIn("(kept)", r.stdout)
        self.assertEqual(os.listdir(os.path.join(self.home, "state", "local")), [])

    def test_reap_scans_tags_even_when_the_journal_is_corrupt(self):
        with open(os.path.join(self.cloud, "expired-one.json"), "w") as f:
            json.dump({"id": "expired-one", "state": "running", "created": time.time() - 60,
                       "tags": {"ephrun-run": "20200101-000000-aaaaaaaa", "ephrun-recipe": "elsewhere",
                                "ephrun-expires": "2020-01-01T01:00:00Z"}}, f)
        os.makedirs(os.path.join(self.home, "state"))
        with open(self.journal_file(), "w") as f:
            f.write("garbage, not SQLite\n" * 200)
        r = self.ephrun("reap", "--yes", "providers=fake")
        self.assertIn("destroyed fake expired-one (expired)", r.stdout)
        self.assertEqual(self.fake_instances(), [])
        self.assertIn("cannot read the journal", r.stderr)
        self.assertEqual(r.returncode, 1, "a reap that could not read the journal says so in its exit code")
        self.assertNotIn("stack traceback", r.stderr)

    def test_reap_destroys_even_when_it_cannot_write_the_journal(self):
        inst = self.launch_fake("keep=true")  # journalled, its run over: an orphan
        db = sqlite3.connect(self.journal_file(), timeout=30, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")  # nobody else can write
        try:
            r = subprocess.run([BIN, "reap", "--yes"], capture_output=True, text=True, timeout=60,
                               env=dict(self.env, EPHRUN_JOURNAL_TIMEOUT="1"), stdin=subprocess.DEVNULL)
        finally:
            db.execute("ROLLBACK")
            db.close()
        self.assertIn("destroyed fake " + inst, r.stdout)
        self.assertEqual(self.fake_instances(), [])
        self.assertIn("could not record in the journal", r.stderr)
        self.assertEqual(r.returncode, 1)

    def test_read_only_commands_do_not_wait_behind_a_writer(self):
        self.launch_fake()
        db = sqlite3.connect(self.journal_file(), timeout=30, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        try:
            t = time.monotonic()
            self.assertEqual(len(json.loads(self.ok("history", "--json").stdout)["runs"]), 1)
            self.assertEqual(len(self.ls_json("all=true")["resources"]), 1)
            self.assertIn("Nothing to reap", self.ok("reap", "--dry-run").stdout)
            self.assertLess(time.monotonic() - t, 10, "waited for the writer's lock (15 s)")
        finally:
            db.execute("ROLLBACK")
            db.close()
        self.assertEqual(os.stat(self.journal_file()).st_mode & 0o777, 0o600)

    def test_ls_and_history_never_create_the_journal(self):
        self.ok("ls")
        self.ok("history")
        self.ok("reap", "--yes")
        self.assertFalse(os.path.exists(self.journal_file()))

    def test_a_file_named_like_a_command_wins(self):
        d = tempfile.mkdtemp(dir=self.home)
        with open(os.path.join(d, "ls"), "w") as f:
            f.write('local e = require "ephrun"\n'
                    'return e.recipe { name = "mine", run = function() print("FILE-LS") end }\n')
        self.assertIn("FILE-LS", self.ok("ls", cwd=d).stdout)
        self.assertNotIn("FILE-LS", self.ok("ls").stdout)

    def test_older_than_is_only_for_reap(self):
        r = self.ephrun("ls", "--older-than", "1h")
        self.assertEqual(r.returncode, 2)
        r = self.ephrun("reap", "--older-than", "soon")
        self.assertEqual(r.returncode, 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
