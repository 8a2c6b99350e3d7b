"""The fault matrix (issue 4): deploy-fast's flow on the local provider, with a fault injected at
every phase boundary -- after launch, while waiting for SSH (the instance boots for 60s), during
sync and during fetch (the instance's SSH connection is frozen with SIGSTOP so the transfer
stalls), during build -- and each of: a failing step, SIGINT, SIGTERM, SIGKILL to ephrun, a closed
output pipe (issue 9 item 1) and os.exit(3) from a task of the recipe (item 2).

After a failure, SIGINT, SIGTERM, a closed pipe or os.exit: exit code 1/130/143/141/3, the message
(for the closed pipe, the run's history detail) names the phase, no process
of the instance is left and the journal marks the instance destroyed. After SIGKILL: `ephrun ls`
shows the orphan and `ephrun reap --yes` removes it. Separately, a SIGKILLed run with a 4s TTL is
removed by the instance's watchdog, with no reap.

The recipe (tests/integration/recipes/fault_matrix.lua) prints `FAULT-POINT <phase> <id>` when the
run is in the phase; the test waits for that marker, never for a fixed time.

The matrix is printed at the end. FAULT_MATRIX_UPDATE_DOC=1 also writes it into
docs/reliability.md (between the fault-matrix markers)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from common import BIN, RECIPES, SRC, Output, env

RECIPE = os.path.join(RECIPES, "fault_matrix.lua")
PHASES = ["launch", "ssh", "sync", "build", "fetch"]
FAULTS = ["fail", "SIGINT", "SIGTERM", "SIGKILL", "closed pipe", "os.exit"]
ROW = {"launch": "after launch", "ssh": "waiting for SSH", "sync": "during sync", "build": "during build",
       "fetch": "during fetch"}
# The phase the message names. Waiting for the booting instance happens inside cloud:launch
# (its wait for `running`; for the local provider, running means sshd listens).
NAMED = {"launch": "launch", "ssh": "launch", "sync": "sync", "build": "build", "fetch": "fetch"}
CODE = {"fail": 1, "SIGINT": 130, "SIGTERM": 143, "SIGKILL": -9, "closed pipe": 141, "os.exit": 3}
SIG = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
MARKER_TIMEOUT = 60
EXIT_TIMEOUT = 60


def processes(needle):
    """Live processes whose command line contains `needle` or whose environment carries the
    local provider's instance marker EPHRUN_LOCAL_INSTANCE=`needle`, each described with its
    state, parent, process group, session and the start of its command line (a watchdog's
    command line is its whole program), so a failure says what was left and where it came from."""
    found = []
    marker = ("EPHRUN_LOCAL_INSTANCE=%s\0" % needle).encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                stat = f.read().rsplit(")", 1)[1].split()
            if stat[0] == "Z":
                continue
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read()
            with open("/proc/%s/environ" % pid, "rb") as f:
                environ = f.read() + b"\0"
        except (OSError, IndexError):
            continue
        if needle.encode() in cmd or marker in environ:
            text = cmd.replace(b"\0", b" ").decode(errors="replace").strip()
            found.append("pid %s state %s ppid %s pgid %s sid %s: %s" % (
                pid, stat[0], stat[1], stat[2], stat[3], text if len(text) <= 160 else text[:160] + "..."))
    return found


def state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read()
    except OSError:
        return b""


def descendants(root):
    children = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/stat" % pid) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(pid))
    out, todo = [], list(children.get(root, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def unread_bytes(port):
    """Bytes waiting in the receive queues of established TCP sockets on local port `port`."""
    total = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                        total += int(fields[4].split(":")[1], 16)
        except OSError:
            pass
    return total


class FaultMatrix(unittest.TestCase):
    results = {}

    @classmethod
    def setUpClass(cls):
        if not os.path.exists("/usr/sbin/sshd"):
            raise unittest.SkipTest("no /usr/sbin/sshd for the local provider")
        cls.tmp = tempfile.mkdtemp(prefix="ephrun-fault-")
        cls.src = os.path.join(cls.tmp, "src")
        os.makedirs(os.path.join(cls.src, "src"))
        for i in range(3):
            with open(os.path.join(cls.src, "src", "f%d.txt" % i), "w") as f:
                f.write("file %d\n" % i * 100)
        cls.t0 = time.monotonic()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)
        table = render(cls.results, time.monotonic() - cls.t0)
        sys.stderr.write("\n" + table + "\n")
        if os.environ.get("FAULT_MATRIX_UPDATE_DOC") and len(cls.results) == len(PHASES) * len(FAULTS) + 1:
            update_doc(table)

    # -- helpers ------------------------------------------------------------------------------

    def new_case(self, name):
        # EPHRUN_HOME apart from src/out, so a command line naming it belongs to the instance.
        case = tempfile.mkdtemp(prefix=name + "-", dir=self.tmp)
        self.home = os.path.join(case, "h")
        self.out = os.path.join(case, "out")
        self.go = os.path.join(case, "go")
        self.env = env(EPHRUN_HOME=self.home)
        self.env.pop("EPHRUN_LUA_DIR", None)
        self.addCleanup(self.force_clean)

    def force_clean(self):
        ldir = os.path.join(self.home, "local")
        for d in os.listdir(ldir) if os.path.isdir(ldir) else []:
            script = os.path.join(ldir, d, "destroy.sh")
            if os.path.exists(script):
                subprocess.run(["sh", script], capture_output=True)

    def ephrun(self, *args, timeout=120):
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, env=self.env,
                              stdin=subprocess.DEVNULL)

    def resources(self, *extra):
        r = self.ephrun("ls", "--json", *extra)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)["resources"]

    def start(self, *params):
        p = subprocess.Popen([BIN, RECIPE, "src=" + self.src, "out=" + self.out, "go=" + self.go, *params],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
                             stdin=subprocess.DEVNULL, cwd=self.tmp)
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait()))
        return p, Output(p.stdout, timeout=MARKER_TIMEOUT)

    def freeze_connection(self, inst):
        """SIGSTOPs every process under the instance's sshd listener (the connection's sshd and
        its sessions): the next SSH request of the run stalls, as on a dead network."""
        with open(os.path.join(self.home, "local", inst, "sshd.pid")) as f:
            listener = int(f.read().split()[0])
        # Repeat until every process under the listener is stopped: one being forked while we
        # stop its parent (sshd's monitor forks the post-auth child) is caught on the next pass.
        deadline = time.monotonic() + MARKER_TIMEOUT
        while True:
            # (A zombie counts as frozen: a stopped parent never reaps it.)
            running = [p for p in descendants(listener) if state(p) not in ("T", "Z", None)]
            if not running and descendants(listener):
                time.sleep(0.05)
                if all(state(p) in ("T", "Z", None) for p in descendants(listener)):
                    break
                continue
            self.assertLess(time.monotonic(), deadline, "cannot freeze the SSH connection")
            for pid in running:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
        open(self.go, "w").close()
        # The run's next request (the transfer's first command) waits, unread, in the frozen
        # sshd's socket: once it is there the transfer has begun and cannot progress.
        with open(os.path.join(self.home, "local", inst, "meta.json")) as f:
            port = json.load(f)["port"]
        deadline = time.monotonic() + MARKER_TIMEOUT
        while not unread_bytes(port):
            self.assertLess(time.monotonic(), deadline, "the run never sent its transfer request")
            time.sleep(0.01)

    def wait_gone(self, inst, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not processes(self.home) and not processes(inst) and \
                    not os.path.exists(os.path.join(self.home, "local", inst)):
                return True
            time.sleep(0.1)
        return False

    def assert_nothing_left(self, inst):
        self.assertEqual(processes(self.home) + processes(inst), [], "instance processes left behind")
        self.assertFalse(os.path.exists(os.path.join(self.home, "local", inst)), "instance directory left")
        self.assertEqual(self.resources(), [], "`ephrun ls` still lists a live resource")
        everything = self.resources("all=true")
        self.assertEqual([(x["id"], x["status"]) for x in everything], [(inst, "destroyed")])

    # -- one cell -----------------------------------------------------------------------------

    def inject(self, phase, fault, ttl="10m"):
        """Runs the recipe with `fault` at `phase`; returns (process, output, instance id, seconds
        from the fault to ephrun's exit)."""
        exit_file = os.path.join(os.path.dirname(self.home), "exit")
        if fault == "fail":
            p, out = self.start("fault_at=" + phase, "fault=fail", "ttl=" + ttl)
            t = time.monotonic()
        else:
            extra = {"closed pipe": ["ticker=true"], "os.exit": ["exit_file=" + exit_file]}.get(fault, [])
            p, out = self.start("fault_at=" + phase, "fault=hold", "ttl=" + ttl, *extra)
            line = out.wait("FAULT-POINT %s " % phase)
            inst = line.split()[2]
            if phase in ("sync", "fetch"):
                self.freeze_connection(inst)
            if phase == "ssh":
                self.assertFalse(os.path.exists(os.path.join(self.home, "local", inst, "state")),
                                 "the instance should still be booting")
            t = time.monotonic()
            if fault == "closed pipe":
                out.close()
            elif fault == "os.exit":
                open(exit_file, "w").close()
            else:
                p.send_signal(SIG[fault])
        try:
            p.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            self.fail("ephrun did not exit within %ds after %s at %s:\n%s" % (EXIT_TIMEOUT, fault, phase,
                                                                               out.text()))
        elapsed = time.monotonic() - t
        out.thread.join(10)
        if not p.stdout.closed:
            p.stdout.close()
        ids = re.findall(r"\bloc-[0-9a-f]{10}\b", out.text())
        if not ids:  # booting (ssh row): the instance was never printed
            ids = [x["id"] for x in self.resources("all=true")]
        self.assertTrue(ids, "no instance id in:\n" + out.text())
        return p, out, ids[0], elapsed

    def cell(self, phase, fault):
        self.new_case("%s-%s" % (phase, fault.replace(" ", "-")))  # (the local provider needs no spaces)
        p, out, inst, elapsed = self.inject(phase, fault)
        text = out.text()
        self.assertEqual(p.returncode, CODE[fault], text)
        if fault != "SIGKILL":
            want = {"fail": "error in phase '%s'", "os.exit": "os.exit(3) in phase '%s'",
                    "closed pipe": "SIGPIPE in phase '%s'"}.get(fault, "interrupted by " + fault + " in phase '%s'") \
                % NAMED[phase]
            self.assert_nothing_left(inst)
            [run] = json.loads(self.ephrun("history", "--json").stdout)["runs"]
            self.assertEqual(run["status"], "failed" if fault in ("fail", "os.exit") else "interrupted")
            if fault == "closed pipe":  # ephrun's messages went to the closed pipe: the journal has it
                self.assertIn(want, run["detail"])
                want = "history: " + run["detail"]
            else:
                self.assertIn(want, text)
            result = "exit %d, `%s`; destroyed" % (p.returncode, want)
            if fault != "fail":
                result += " in %.1fs" % elapsed
        else:
            [res] = self.resources()
            self.assertEqual((res["id"], res["state"]), (inst, "orphaned"))
            [run] = json.loads(self.ephrun("history", "--json").stdout)["runs"]
            self.assertEqual(run["status"], "died")
            self.assertTrue(os.path.isdir(os.path.join(self.home, "local", inst)))
            r = self.ephrun("reap", "--yes")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("destroyed local " + inst, r.stdout)
            self.assertTrue(self.wait_gone(inst, 10), processes(self.home) + processes(inst))
            self.assert_nothing_left(inst)
            result = "orphan in `ls`; `reap` destroyed it"
        FaultMatrix.results[(phase, fault)] = result

    def test_98_destroy_without_the_watchdog_record(self):
        """SIGTERM while booting, with watchdog.pid empty at that moment: the watchdog is ended all
        the same. A destroy used to find it only through that file, which the watchdog rewrote in
        place (truncated, then written) as it started: under load the destroy read it empty and the
        watchdog's shell outlived the run (the ssh row failed about one run in seven)."""
        self.new_case("no-watchdog-record")
        p, out = self.start("fault_at=ssh", "fault=hold", "ttl=10m")
        inst = out.wait("FAULT-POINT ssh ").split()[2]
        record = os.path.join(self.home, "local", inst, "watchdog.pid")
        with open(record) as f:
            watchdog = int(f.read())
        # Once it sleeps out the boot delay, it is past writing its own pid: the file stays empty.
        deadline = time.monotonic() + MARKER_TIMEOUT
        while not any(cmdline(c).startswith(b"sleep\0") for c in descendants(watchdog)):
            self.assertLess(time.monotonic(), deadline, "the watchdog never started its boot delay")
            time.sleep(0.01)
        open(record, "w").close()
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            self.fail("ephrun did not exit within %ds after SIGTERM:\n%s" % (EXIT_TIMEOUT, out.text()))
        out.thread.join(10)
        p.stdout.close()
        self.assertEqual(p.returncode, 143, out.text())
        self.assert_nothing_left(inst)

    def test_99_ttl_watchdog_removes_the_orphan(self):
        """A SIGKILLed run, no reap: the watchdog removes the instance at its 4s TTL."""
        self.new_case("ttl")
        p, out, inst, _ = self.inject("launch", "SIGKILL", ttl="4s")
        t_kill = time.monotonic()
        self.assertEqual(p.returncode, -9)
        [res] = self.resources()
        self.assertEqual((res["id"], res["state"]), (inst, "orphaned"))
        self.assertNotEqual(processes(self.home), [], "the instance must outlive a SIGKILLed ephrun")
        self.assertTrue(self.wait_gone(inst, 30), "the watchdog did not remove the instance at its TTL: %s"
                        % (processes(self.home) + processes(inst)))
        gone = time.monotonic() - t_kill
        FaultMatrix.results[("ttl", "SIGKILL")] = "watchdog removed it %.1fs after the kill (ttl 4s)" % gone


def make(phase, fault):
    def test(self):
        self.cell(phase, fault)
    test.__doc__ = "%s at %s" % (fault, phase)
    return test


for _i, _phase in enumerate(PHASES):
    for _j, _fault in enumerate(FAULTS):
        setattr(FaultMatrix, "test_%d%d_%s_%s" % (_i, _j, _phase, _fault.replace(" ", "_").replace(".", "_")),
                make(_phase, _fault))


def render(results, seconds):
    rows = ["| phase \\ fault | " + " | ".join(FAULTS) + " |", "|---" * (len(FAULTS) + 1) + "|"]
    for phase in PHASES:
        cells = [results.get((phase, f), "**not run / FAILED**") for f in FAULTS]
        rows.append("| %s | %s |" % (ROW[phase], " | ".join(cells)))
    ttl = results.get(("ttl", "SIGKILL"), "**not run / FAILED**")
    rows.append("")
    rows.append("TTL watchdog (SIGKILL after launch, ttl=4s, no reap): " + ttl)
    rows.append("")
    rows.append("%d of %d cells passed in %.0fs." % (len(results), len(PHASES) * len(FAULTS) + 1, seconds))
    return "\n".join(rows)


def update_doc(table):
    path = os.path.join(SRC, "docs", "reliability.md")
    with open(path) as f:
        text = f.read()
    begin, end = "<!-- fault-matrix:begin -->\n", "<!-- fault-matrix:end -->"
    i, j = text.index(begin) + len(begin), text.index(end)
    with open(path, "w") as f:
        f.write(text[:i] + table + "\n" + text[j:])


if __name__ == "__main__":
    unittest.main(verbosity=2)
