"""Secrets in every form they take: shell-quoted, JSON-escaped and URL-encoded in plans and logs;
split across the pieces of a 200 KiB line from a local child and from a remote command on a
real sshd; a too-short secret warned about; env= values that are not secrets left alone; the
debug log file private; the never-send list matched ignoring case by sync, the plan and
deploy-to-server's tarball."""
import json
import os
import shutil
import stat
import subprocess
import tempfile
import unittest

from common import BIN, env
from sshd import Sshd

# Fragments of a value with a quote, a double quote, a slash and a backslash in it: none of
# them may show, whatever the encoding.
PARTS = ["Zq9", "Vx8", "Wy7", "Uk6", "Rt5"]
TRICKY = "Zq9'Vx8\"Wy7/Uk6\\Rt5 ok"

FORMS_RECIPE = r'''
local ephrun = require "ephrun"
local function urlencode(s)
  return (s:gsub("[^%w%-._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end
return ephrun.recipe {
  name = "forms",
  run = function()
    local v = ephrun.secret("FORMS_TOKEN")
    ephrun.effect { kind = "run", what = "curl -H " .. ephrun.shell_quote("Authorization: Bearer " .. v),
      where = "api", details = { ephrun.json.encode({ token = v }), "https://h/cb?t=" .. urlencode(v),
        "echo \"" .. v:gsub('[\\"$`]', "\\%0") .. "\"" },
      run = function() end }
    ephrun.log.info("quoted %s json %s url %s", ephrun.shell_quote(v), ephrun.json.encode(v), urlencode(v))
  end,
}
'''

# A child that writes one 200 KiB line in a single write: the secret over and over, so that
# every place the line could be cut falls inside an occurrence (65536 included).
CHILD = ("import os\n"
         "v = os.environ['LONG_TOKEN']\n"
         "data = ((v + '|') * (200 * 1024 // (len(v) + 1)) + '\\n').encode()\n"
         "while data:\n"
         "    data = data[os.write(1, data):]\n")

LONG_TOKEN = "long-line-secret-0123456789ab"  # 29 bytes + '|': 65536 is inside one


def write(path, text, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    if mode:
        os.chmod(path, mode)


class Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ephrun-secrets-")
        os.chmod(self.dir, 0o755)

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def recipe(self, name, text):
        path = os.path.join(self.dir, name + ".lua")
        write(path, text)
        return path

    def ephrun(self, *args, timeout=120, **extra):
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=self.dir, env=env(EPHRUN_HOME=os.path.join(self.dir, "home"), **extra))

    def assertHidden(self, out):
        for part in PARTS:
            self.assertNotIn(part, out)

    def assertLongLineRedacted(self, stderr, prefix):
        pieces = [l for l in stderr.splitlines() if prefix in l and "|" in l]
        self.assertGreater(len(pieces), 1, "the 200 KiB line was not split: " + stderr[:500])
        masks = 0
        for p in pieces:
            body = p.split(prefix, 1)[1]
            masks += body.count("<secret:LONG_TOKEN>")
            leak = body.replace("<secret:LONG_TOKEN>", "").replace("|", "")
            self.assertEqual(leak, "", "a fragment of the secret shows: " + leak[:200])
            self.assertLessEqual(len(p), 65536 + 200)
        self.assertEqual(masks, 200 * 1024 // (len(LONG_TOKEN) + 1))
        self.assertNotIn("long-line", stderr)
        self.assertNotIn("0123456789ab", stderr)


class Forms(Base):
    def test_plan_and_log_hide_shell_quoted_json_and_url_encoded_forms(self):
        path = self.recipe("forms", FORMS_RECIPE)
        r = self.ephrun(path, "--dry-run", FORMS_TOKEN=TRICKY)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertHidden(r.stdout + r.stderr)
        self.assertIn("curl -H 'Authorization: Bearer <secret:FORMS_TOKEN>'", r.stdout)
        self.assertIn('{"token":"<secret:FORMS_TOKEN>"}', r.stdout)
        self.assertIn("https://h/cb?t=<secret:FORMS_TOKEN>", r.stdout)
        self.assertIn('echo "<secret:FORMS_TOKEN>"', r.stdout)
        self.assertEqual(r.stderr.count("<secret:FORMS_TOKEN>"), 3, r.stderr)

        r = self.ephrun(path, "--dry-run", "--json", FORMS_TOKEN=TRICKY)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertHidden(r.stdout + r.stderr)
        plan = json.loads(r.stdout)
        step = [s for s in plan["steps"] if s["kind"] == "run"][0]
        self.assertEqual(step["what"], "curl -H 'Authorization: Bearer <secret:FORMS_TOKEN>'")
        self.assertEqual(step["details"][0], '{"token":"<secret:FORMS_TOKEN>"}')

    def test_print_and_writes_to_stdout_and_stderr_are_redacted_but_files_are_not(self):
        path = self.recipe("printer", r'''
local ephrun = require "ephrun"
return ephrun.recipe {
  name = "printer",
  run = function(p)
    local v = ephrun.secret("FORMS_TOKEN")
    print("print", v, ephrun.json.encode({ t = v }))
    io.write("io.write ", ephrun.shell_quote(v), "\n")
    io.stdout:write("stdout ", v, "\n")
    io.stderr:write("stderr ", v, "\n")
    local f = assert(io.open(p.out, "w"))
    f:write(v)
    f:close()
  end,
  params = { out = { type = "string" } },
}
''')
        out = os.path.join(self.dir, "written")
        r = self.ephrun(path, "out=" + out, FORMS_TOKEN=TRICKY)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertHidden(r.stdout + r.stderr)
        self.assertIn("print\t<secret:FORMS_TOKEN>\t{\"t\":\"<secret:FORMS_TOKEN>\"}\n", r.stdout)
        self.assertIn("io.write '<secret:FORMS_TOKEN>'\n", r.stdout)
        self.assertIn("stdout <secret:FORMS_TOKEN>\n", r.stdout)
        self.assertIn("stderr <secret:FORMS_TOKEN>\n", r.stderr)
        with open(out) as f:
            self.assertEqual(f.read(), TRICKY)  # a file the recipe writes is its own business

    def test_a_secret_shorter_than_4_characters_is_warned_about(self):
        path = self.recipe("short", 'local ephrun = require "ephrun"\n'
                           'return ephrun.recipe { name = "short", run = function()\n'
                           '  ephrun.log.info("got %d bytes", #ephrun.secret("SHORT_TOKEN")) end }\n')
        r = self.ephrun(path, SHORT_TOKEN="q7z")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        warning = [l for l in r.stderr.splitlines() if "SHORT_TOKEN" in l]
        self.assertEqual(len(warning), 1, r.stderr)
        self.assertIn("shorter than 4 characters", warning[0])
        self.assertIn("NOT be redacted", warning[0])
        self.assertTrue(warning[0].startswith("W "), warning[0])
        self.assertNotIn("q7z", r.stderr)

    def test_the_log_file_is_readable_by_its_owner_only(self):
        path = self.recipe("hello", 'local ephrun = require "ephrun"\n'
                           'return ephrun.recipe { name = "hello", run = function() ephrun.log.debug("hi") end }\n')
        fresh = os.path.join(self.dir, "fresh.log")
        old = os.umask(0o022)
        try:
            r = self.ephrun(path, "--log-file", fresh)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(stat.S_IMODE(os.stat(fresh).st_mode), 0o600)
            with open(fresh) as f:
                self.assertIn("hi", f.read())
            existing = os.path.join(self.dir, "existing.log")
            write(existing, "earlier run\n", 0o644)
            r = self.ephrun(path, "--log-file", existing)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(stat.S_IMODE(os.stat(existing).st_mode), 0o600)
            with open(existing) as f:
                self.assertTrue(f.read().startswith("earlier run\n"))
        finally:
            os.umask(old)

    def test_a_200k_line_from_a_local_child_is_redacted_across_every_cut(self):
        write(os.path.join(self.dir, "child.py"), CHILD)
        path = self.recipe("local_long", 'local ephrun = require "ephrun"\n'
                           'return ephrun.recipe { name = "local_long", run = function()\n'
                           '  local v = ephrun.secret("LONG_TOKEN")\n'
                           '  ephrun.proc.run({ "python3", "child.py" }, { env = { LONG_TOKEN = v } })\n'
                           'end }\n')
        r = self.ephrun(path, LONG_TOKEN=LONG_TOKEN)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        self.assertLongLineRedacted(r.stderr, "[python3] ")


SSH_RECIPE = r'''
local ephrun = require "ephrun"
return ephrun.recipe {
  name = "remote",
  params = { port = { type = "number", default = 22 }, user = { default = "" }, key_file = { default = "" },
             host_key = { default = "" }, what = { default = "long" }, child = { default = "" } },
  run = function(p)
    local sh <close> = ephrun.ssh.connect { host = "127.0.0.1", port = p.port, user = p.user,
      key_file = p.key_file, host_key = p.host_key }
    if p.what == "long" then
      sh:run("python3 " .. ephrun.shell_quote(p.child), { env = { LONG_TOKEN = ephrun.secret("LONG_TOKEN") } })
    else
      sh:run('echo "deploying to $DEPLOY_DIR in $NODE_ENV mode with token $API_TOKEN"',
        { env = { NODE_ENV = "production", DEPLOY_DIR = "/srv/app", API_TOKEN = ephrun.secret("API_TOKEN") } })
      ephrun.log.info("after the run: production /srv/app")
    end
  end,
}
'''


class SshdCase(Base):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ephrun-secrets-ssh-")
        os.chmod(cls.tmp, 0o755)
        cls.key = os.path.join(cls.tmp, "id_ed25519")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", cls.key], check=True)
        cls.sshd = Sshd().__enter__()
        with open(cls.key + ".pub") as f:
            cls.sshd.authorize(f.read().strip())
        cls.child = os.path.join(cls.tmp, "child.py")
        write(cls.child, CHILD, 0o644)

    @classmethod
    def tearDownClass(cls):
        cls.sshd.__exit__(None, None, None)
        shutil.rmtree(cls.tmp, ignore_errors=True)


class Remote(SshdCase):
    def remote(self, what, **extra):
        path = self.recipe("remote", SSH_RECIPE)
        return self.ephrun(path, "port=%d" % self.sshd.port, "user=" + self.sshd.user, "key_file=" + self.key,
                           "host_key=" + self.sshd.host_key_pub, "what=" + what, "child=" + self.child, **extra)

    def test_a_200k_line_from_a_remote_command_is_redacted_across_every_cut(self):
        r = self.remote("long", LONG_TOKEN=LONG_TOKEN)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:] + self.sshd.log())
        self.assertLongLineRedacted(r.stderr, "[127.0.0.1] ")

    def test_env_values_are_not_made_secrets_but_secrets_stay_hidden(self):
        r = self.remote("env", API_TOKEN="api-token-77c1e0")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr + self.sshd.log())
        self.assertIn("deploying to /srv/app in production mode with token <secret:API_TOKEN>", r.stderr)
        self.assertIn("after the run: production /srv/app", r.stderr)
        self.assertNotIn("<secret:env", r.stderr)
        self.assertNotIn("api-token-77c1e0", r.stdout + r.stderr)


SYNC_RECIPE = r'''
local ephrun = require "ephrun"
return ephrun.recipe {
  name = "sync_secrets",
  params = { port = { type = "number", default = 22 }, user = { default = "" }, key_file = { default = "" },
             host_key = { default = "" }, src = { default = "" }, dest = { default = "" } },
  run = function(p)
    local ssh = ephrun.ssh
    local sh <close> = ssh.connect { host = "127.0.0.1", port = p.port, user = p.user,
      key_file = p.key_file, host_key = p.host_key }
    sh:sync(p.src, p.dest)
    for _, case in ipairs { { ".ENV", true }, { "conf/.Env.Local", true }, { "ID_RSA", true },
        { "keys/Id_Ed25519", true }, { "key.PEM", true }, { ".GIT/config", true }, { "notes.txt", false },
        { "src/environment.ts", false } } do
      if ssh.never_sent(case[1]) ~= case[2] then error("never_sent(" .. case[1] .. ") is not " .. tostring(case[2])) end
    end
    print("never_send: " .. table.concat(ssh.never_send(), " "))
  end,
}
'''


def secret_tree(root):
    for rel in (".ENV", "conf/.Env.Local", "ID_RSA", "keys/Id_Ed25519", "key.PEM", ".GIT/config", "notes.txt",
                "conf/app.toml", "NODE_MODULES/kept.js", "node_modules/dropped.js"):
        write(os.path.join(root, rel), "content of %s\n" % rel)
    # A .gitignore cannot re-include what is never sent; only `include` can.
    write(os.path.join(root, ".gitignore"), "!.ENV\n!ID_RSA\n")


class NeverSend(SshdCase):
    SENT = [".gitignore", "NODE_MODULES/kept.js", "conf/app.toml", "keys", "notes.txt"]

    def sent(self, root):
        out = []
        for d, dirs, files in os.walk(root):
            for name in files + [x for x in dirs if not os.listdir(os.path.join(d, x))]:
                out.append(os.path.relpath(os.path.join(d, name), root))
        return sorted(out)

    def test_sync_and_its_plan_leave_out_secrets_whatever_their_case(self):
        src = os.path.join(self.dir, "src")
        secret_tree(src)
        os.remove(os.path.join(src, "node_modules", "dropped.js"))
        os.rmdir(os.path.join(src, "node_modules"))
        dest = "sync-%d-%s" % (os.getpid(), os.path.basename(self.dir))
        path = self.recipe("sync_secrets", SYNC_RECIPE)
        args = [path, "port=%d" % self.sshd.port, "user=" + self.sshd.user, "key_file=" + self.key,
                "host_key=" + self.sshd.host_key_pub, "src=" + src, "dest=" + dest]
        try:
            r = self.ephrun(*args)
            self.assertEqual(self.sent(os.path.join(self.sshd.home, dest)), self.SENT)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr + self.sshd.log())
            self.assertIn("never_send: .env* *.pem id_* .git", r.stdout)
            r = self.ephrun(*args, "--dry-run")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("4 files", r.stdout)
            self.assertIn("(6 excluded)", r.stdout)
            self.assertIn("excludes: .env* *.pem id_* .git", r.stdout)
        finally:
            shutil.rmtree(os.path.join(self.sshd.home, dest), ignore_errors=True)

    def test_deploy_to_server_tarball_leaves_out_secrets_whatever_their_case(self):
        src = os.path.join(self.dir, "app")
        secret_tree(src)
        known_hosts = os.path.join(self.dir, "known_hosts")
        write(known_hosts, "[127.0.0.1]:%d %s\n" % (self.sshd.port, self.sshd.host_key_pub))
        dest = "deploy-%d-%s" % (os.getpid(), os.path.basename(self.dir))
        try:
            r = self.ephrun("deploy-to-server", "host=127.0.0.1", "port=%d" % self.sshd.port,
                            "user=" + self.sshd.user, "key_file=" + self.key, "known_hosts=" + known_hosts,
                            "src=" + src, "dir=" + dest, "install=", "restart=", "health_url=", "preserve=")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr + self.sshd.log())
            self.assertEqual(self.sent(os.path.join(self.sshd.home, dest)), self.SENT)
        finally:
            for name in os.listdir(self.sshd.home):
                if name.startswith(dest) or name.startswith("." + dest):
                    shutil.rmtree(os.path.join(self.sshd.home, name), ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
