"""Bad parameters and recipes, secret parameters, the load phase, with the real binary."""
import hashlib
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from common import BIN, SRC, env, wait_ready

HEADER = 'local ephrun = require "ephrun"\n'


def recipe(params="", run="", top=""):
    return (HEADER + top + "return ephrun.recipe {\n  name = \"t\",\n  summary = \"a test recipe\",\n"
            "  params = {\n" + params + "\n  },\n  run = function(p)\n" + run + "\n  end,\n}\n")


SECRET_RECIPE = recipe(
    '    token = { type = "secret", required = true, doc = "API token" },\n'
    '    region = { default = "ewr" },',
    '    ephrun.log.info("token is %s", p.token)\n'
    '    ephrun.effect { kind = "http", what = "POST /login with " .. p.token, run = function() end }\n'
    '    print("len=" .. #p.token)\n'
    '    if os.getenv("FAIL_WITH_TOKEN") then error("refused " .. p.token) end')


class Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ephrun-params-")
        self.home = os.path.join(self.dir, "home")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def ephrun(self, *args, timeout=60, **extra):
        return subprocess.run([BIN, *args], cwd=self.dir, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=env(EPHRUN_HOME=self.home, **extra))


class Help(Base):
    def test_help_with_a_default_of_150_characters(self):
        long = "x" * 150
        r = self.ephrun(self.write("long.lua", recipe('    cmd = { default = "%s", doc = "the command" },' % long)),
                        "--help")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(long, r.stdout)
        self.assertIn("the command", r.stdout)
        r = self.ephrun("create-build-snapshot", "--help")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("nodesource", r.stdout)

    def test_choices_given_as_a_string_is_a_spec_error_at_the_recipe_line(self):
        r = self.ephrun(self.write("choices.lua", recipe('    mode = { default = "a", choices = "abc" },')), "--help")
        self.assertEqual(r.returncode, 1)
        self.assertIn("choices.lua:2: parameter 'mode': choices must be a list", r.stderr)
        self.assertNotIn("traceback", r.stderr)
        r = self.ephrun(self.write("minmax.lua", recipe('    n = { type = "number", default = 1, min = "low" },')))
        self.assertEqual(r.returncode, 1)
        self.assertIn("minmax.lua:2: parameter 'n': min must be a number", r.stderr)

    def test_general_help_goes_to_stdout(self):
        r = self.ephrun("--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("Usage: ephrun RECIPE", r.stdout)
        self.assertEqual(r.stderr, "")
        r = self.ephrun()
        self.assertEqual(r.returncode, 2)
        self.assertIn("Usage: ephrun RECIPE", r.stderr)

    def test_list_shows_summaries_and_where_each_comes_from(self):
        r = self.ephrun("--list")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("  ")}
        self.assertIn("Build on a temporary high-CPU instance", lines["deploy-fast"])
        self.assertIn("snapshot", lines["create-build-snapshot"])
        self.assertIn("past runs", lines["history"])
        self.assertIn("Built-in recipes", r.stdout)
        self.assertIn("Commands", r.stdout)


class Ranges(Base):
    def dry(self, *args):
        return self.ephrun("deploy-fast", "--dry-run", "src=" + os.path.join(SRC, "examples", "hello"), *args)

    def test_zero_negative_huge_and_hex_values_are_refused(self):
        cases = [
            (["ttl=0"], "parameter 'ttl' must be more than 0s"),
            (["ttl=100000000000000000000s"], "parameter 'ttl' must be at most"),
            (["boot_delay=1e999"], "parameter 'boot_delay' expects a number (decimal, finite)"),
            (["ssh_deadline=0s"], "parameter 'ssh_deadline' must be more than 0s"),
            (["boot_delay=-1"], "parameter 'boot_delay' must be at least 0"),
            (["boot_delay=0x10"], "parameter 'boot_delay' expects a number (decimal, finite)"),
        ]
        for args, message in cases:
            r = self.dry(*args)
            self.assertEqual(r.returncode, 2, (args, r.stdout, r.stderr))
            self.assertIn(message, r.stderr, args)
        r = self.dry("boot_delay=0", "ttl=45m")  # the default 0 stays allowed
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_min_max_and_opt_outs(self):
        path = self.write("range.lua", recipe(
            '    n = { type = "number", default = 2, min = 1, max = 3 },\n'
            '    wait = { type = "duration", default = "5m", min = "1m", max = "1h" },\n'
            '    ttl = { type = "duration", default = false },\n'
            '    offset = { type = "number", default = -5, min = -10 },',
            '    print("n=" .. p.n .. " wait=" .. p.wait .. " ttl=" .. tostring(p.ttl) .. " offset=" .. p.offset)'))
        r = self.ephrun(path, "n=3", "wait=1m", "offset=-10")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("n=3 wait=60.0 ttl=false offset=-10", r.stdout)
        r = self.ephrun(path, "ttl=2h")
        self.assertIn("ttl=7200.0", r.stdout)
        r = self.ephrun(path, "ttl=none")
        self.assertIn("ttl=false", r.stdout)
        for arg, message in [("n=4", "must be at most 3"), ("n=0.5", "must be at least 1"),
                             ("wait=30s", "must be at least 1m"), ("wait=2h", "must be at most 1h"),
                             ("offset=-11", "must be at least -10")]:
            r = self.ephrun(path, arg)
            self.assertEqual(r.returncode, 2, arg)
            self.assertIn(message, r.stderr, arg)

    def test_a_default_outside_its_range_is_a_spec_error(self):
        r = self.ephrun(self.write("bad.lua", recipe('    n = { type = "number", default = 5, max = 3 },')), "--help")
        self.assertEqual(r.returncode, 1)
        self.assertIn("bad.lua:2: parameter 'n': the default 5 is outside its range", r.stderr)

    def test_every_missing_required_parameter_is_reported_at_once(self):
        path = self.write("req.lua", recipe(
            '    host = { required = true, doc = "the server" },\n'
            '    dir = { type = "path", required = true },\n'
            '    port = { type = "number", default = 22 },'))
        r = self.ephrun(path, "port=x")
        self.assertEqual(r.returncode, 2)
        self.assertIn("missing required parameter 'host' (string): the server", r.stderr)
        self.assertIn("missing required parameter 'dir' (path)", r.stderr)
        self.assertIn("parameter 'port' expects", r.stderr)


class LoadErrors(Base):
    def test_spec_error_in_a_tail_called_recipe_names_the_recipe_line(self):
        path = self.write("spec.lua", HEADER + "\n\nreturn ephrun.recipe {\n  name = \"x\",\n"
                          "  params = { a = { type = \"nope\" } },\n  run = function() end,\n}\n")
        r = self.ephrun(path)
        self.assertEqual(r.returncode, 1)
        self.assertIn("spec.lua:4: parameter 'a': unknown type 'nope'", r.stderr)
        self.assertNotIn("_main.lua", r.stderr)
        self.assertNotIn("stack traceback", r.stderr)
        r = self.ephrun(path, "-v")
        self.assertIn("stack traceback", r.stderr)
        r = self.ephrun(self.write("noname.lua", HEADER + "return ephrun.recipe { name = \"\", run = function() end }\n"))
        self.assertIn("noname.lua:2: ephrun.recipe: 'name' must be a non-empty string", r.stderr)
        r = self.ephrun(self.write("local.lua", HEADER + "local r = ephrun.recipe {\n  name = \"x\",\n"
                                   "  params = { a = { type = \"nope\" } },\n  run = function() end }\nreturn r\n"))
        self.assertIn("local.lua:2: parameter 'a': unknown type 'nope'", r.stderr)

    def test_a_file_that_is_not_a_recipe_says_so_without_a_traceback(self):
        for name, text, what in [("r42.lua", "return 42\n", "returns a number"),
                                 ("empty.lua", "", "returns nothing"),
                                 ("table.lua", "return {}\n", "returns a table that is not an ephrun.recipe")]:
            r = self.ephrun(self.write(name, text))
            self.assertEqual(r.returncode, 1, name)
            self.assertIn(name + " " + what, r.stderr)
            self.assertIn("return ephrun.recipe{", r.stderr)
            self.assertNotIn("stack traceback", r.stderr)

    def test_error_with_a_table_names_the_line(self):
        r = self.ephrun(self.write("et.lua", "local x = 1\nerror({})\n"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("et.lua:2: the recipe raised a table value", r.stderr)
        self.assertNotIn("(error object is a table value)", r.stderr)
        r = self.ephrun(self.write("em.lua", "error({ message = \"no quota\" })\n"))
        self.assertIn("em.lua:1: no quota", r.stderr)

    def test_hints_name_the_recipe_as_typed(self):
        r = self.ephrun("deploy-fast", "nope=1")
        self.assertEqual(r.returncode, 2)
        self.assertIn("Run `ephrun deploy-fast --help`", r.stderr)
        self.assertNotIn("recipes/deploy-fast.lua", r.stderr)
        r = self.ephrun("reap", "nope=1")
        self.assertEqual(r.returncode, 2)
        self.assertIn("Run `ephrun reap --help`", r.stderr)
        self.assertNotIn("stdlib/ephrun/cmd", r.stderr)


class Dotenv(Base):
    # The value goes to a file: what a recipe prints is redacted, a file it writes is its own.
    READ = recipe('    name = { default = "FOO" },',
                  '    local f = assert(io.open("value.out", "w")); f:write("value=[" .. ephrun.secret(p.name) .. "]"); f:close()')

    def value(self, dotenv, name="FOO"):
        os.makedirs(os.path.join(self.dir, "r"), exist_ok=True)
        with open(os.path.join(self.dir, "r", ".env"), "wb") as f:
            f.write(dotenv)
        r = self.ephrun(self.write("r/read.lua", self.READ), "name=" + name)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(self.dir, "value.out")) as f:
            return f.read().split("value=[", 1)[1].split("]", 1)[0]

    def test_bom_comments_and_quotes(self):
        self.assertEqual(self.value(b"\xef\xbb\xbfFOO=first-key\nBAR=2\n"), "first-key")
        self.assertEqual(self.value(b"FOO=abcd # a comment\n"), "abcd")
        self.assertEqual(self.value(b"FOO=ab#cd\n"), "ab#cd")
        self.assertEqual(self.value(b"FOO=\"ab # cd\" # comment\n"), "ab # cd")
        self.assertEqual(self.value(b"FOO='x\\ny'\n"), "x\\ny")
        self.assertEqual(self.value(b"FOO=\"x\\ny\"\n"), "x\ny")
        self.assertEqual(self.value(b"# FOO=no\r\nFOO=crlf-value\r\n"), "crlf-value")

    def test_a_fifo_dotenv_is_refused_not_waited_on(self):
        os.makedirs(os.path.join(self.dir, "f"))
        os.mkfifo(os.path.join(self.dir, "f", ".env"))
        path = self.write("f/top.lua", HEADER + "local v = ephrun.secret(\"FOO\")\n" + recipe()[len(HEADER):])
        r = self.ephrun(path, timeout=30)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(".env is not a regular file", r.stderr)


class Hijack(Base):
    def test_a_file_named_like_a_command_that_is_not_lua_does_not_hijack_it(self):
        self.write("history", "ls -la\ncd /tmp && make\n")
        self.write("deploy-fast", "notes about deploying\n")
        r = self.ephrun("history")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("./history is not a Lua file, so `ephrun history` runs the built-in command", r.stderr)
        self.assertIn("No runs", r.stdout)
        r = self.ephrun("deploy-fast", "--help")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Build on a temporary", r.stdout)
        r = self.ephrun("./history")
        self.assertEqual(r.returncode, 1)
        self.assertIn("history:1:", r.stderr)

    def test_a_lua_file_named_like_a_builtin_still_wins(self):
        self.write("deploy-fast", recipe("", '    print("FILE-RECIPE")'))
        r = self.ephrun("deploy-fast")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("FILE-RECIPE", r.stdout)


class Json(Base):
    def test_json_is_a_usage_error_only_for_commands_without_a_json_shape(self):
        r = self.ephrun("reap", "--json")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--json has no meaning for `ephrun reap`", r.stderr)
        # a recipe's real run takes --json (test_measure.py runs one): here its parameter error
        r = self.ephrun("deploy-fast", "--json", "ttl=forever")
        self.assertEqual(r.returncode, 2)
        self.assertFalse(json.loads(r.stdout)["ok"])
        r = self.ephrun("history", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("runs", json.loads(r.stdout))

    def test_parameter_error_under_json_prints_json(self):
        r = self.ephrun("deploy-fast", "--dry-run", "--json", "ttl=forever", "nope=1")
        self.assertEqual(r.returncode, 2)
        j = json.loads(r.stdout)
        self.assertFalse(j["ok"])
        self.assertIn("parameter 'ttl' expects a duration", j["error"])
        self.assertEqual(len(j["errors"]), 2)

    def test_load_errors_under_json_print_json(self):
        r = self.ephrun(self.write("syntax.lua", "local x = \nreturn {"), "--dry-run", "--json")
        self.assertEqual(r.returncode, 1)
        j = json.loads(r.stdout)
        self.assertFalse(j["ok"])
        self.assertIn("syntax.lua:2:", j["error"])
        r = self.ephrun(self.write("r42.lua", "return 42\n"), "--dry-run", "--json")
        self.assertIn("r42.lua returns a number", json.loads(r.stdout)["error"])
        r = self.ephrun("no-such-recipe", "--dry-run", "--json")
        self.assertEqual(r.returncode, 2)
        self.assertIn("no recipe 'no-such-recipe'", json.loads(r.stdout)["error"])

    def test_failed_dry_run_json_names_the_error(self):
        path = self.write("fails.lua", recipe("", '    error("no plan for you")'))
        r = self.ephrun(path, "--dry-run", "--json")
        self.assertEqual(r.returncode, 1)
        j = json.loads(r.stdout)
        self.assertFalse(j["ok"])
        self.assertIn("no plan for you", j["error"])


class LoadInterrupt(Base):
    def interrupt(self, sig):
        path = self.write("loop.lua", 'io.stdout:write("READY\\n") io.stdout:flush()\nwhile true do end\n')
        p = subprocess.Popen([BIN, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env(EPHRUN_HOME=self.home))
        wait_ready(p)
        t0 = time.monotonic()
        p.send_signal(sig)
        try:
            _, err = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            self.fail("a loop at load time ignored the signal")
        return p.returncode, err, time.monotonic() - t0

    def test_sigint_stops_an_infinite_loop_at_load_time(self):
        code, err, elapsed = self.interrupt(signal.SIGINT)
        self.assertEqual(code, 130, err)
        self.assertIn("interrupted by SIGINT in phase 'load'", err)
        self.assertLess(elapsed, 5)

    def test_sigterm_stops_an_infinite_loop_at_load_time(self):
        code, err, _ = self.interrupt(signal.SIGTERM)
        self.assertEqual(code, 143, err)


class SecretParams(Base):
    VALUE = "tok-7f3a9c1e55"

    def setUp(self):
        super().setUp()
        self.path = self.write("secret.lua", SECRET_RECIPE)

    def assert_hidden(self, r):
        self.assertNotIn(self.VALUE, r.stdout + r.stderr)

    def test_env_source_is_redacted_in_log_plan_json_and_errors(self):
        r = self.ephrun(self.path, "token=@env:MY_TOK", "-v", MY_TOK=self.VALUE, FAIL_WITH_TOKEN="1")
        self.assertEqual(r.returncode, 1)
        self.assertIn("len=%d" % len(self.VALUE), r.stdout)
        self.assertIn("token is <secret:token>", r.stderr)
        self.assertIn("refused <secret:token>", r.stderr)
        self.assert_hidden(r)
        r = self.ephrun(self.path, "token=@env:MY_TOK", "--dry-run", MY_TOK=self.VALUE)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("POST /login with <secret:token>", r.stdout)
        self.assert_hidden(r)
        r = self.ephrun(self.path, "token=@env:MY_TOK", "--dry-run", "--json", MY_TOK=self.VALUE)
        self.assertIn("<secret:token>", r.stdout)
        self.assert_hidden(r)

    def test_history_hash_does_not_depend_on_the_secret(self):
        for value in (self.VALUE, "another-value-123"):
            r = self.ephrun(self.path, "token=@env:MY_TOK", MY_TOK=value)
            self.assertEqual(r.returncode, 0, r.stderr)
        r = self.ephrun("history", "--json")
        runs = json.loads(r.stdout)["runs"]
        self.assertEqual(len(runs), 2)
        expected = hashlib.sha256(b"region=ewr\ntoken=<secret:token>").hexdigest()[:16]
        self.assertEqual([x["params_hash"] for x in runs], [expected, expected])
        self.assertNotIn(self.VALUE, r.stdout)

    def test_file_source_strips_one_trailing_newline_and_must_be_regular(self):
        self.write("tok.txt", self.VALUE + "\n")
        r = self.ephrun(self.path, "token=@file:tok.txt", "--dry-run")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("len=%d" % len(self.VALUE), r.stdout)
        self.assert_hidden(r)
        os.mkfifo(os.path.join(self.dir, "fifo"))
        r = self.ephrun(self.path, "token=@file:fifo", timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn("parameter 'token': fifo is not a regular file", r.stderr)
        r = self.ephrun(self.path, "token=@env:UNSET_VAR_XYZ")
        self.assertEqual(r.returncode, 2)
        self.assertIn("parameter 'token': environment variable UNSET_VAR_XYZ is not set", r.stderr)

    def test_missing_secret_without_a_terminal_says_how_to_give_it(self):
        r = self.ephrun(self.path)
        self.assertEqual(r.returncode, 2)
        self.assertIn("missing required secret parameter 'token'", r.stderr)
        self.assertIn("token=@env:VAR", r.stderr)
        self.assertIn("token=@file:PATH", r.stderr)

    def test_literal_value_is_redacted_too_with_a_warning(self):
        r = self.ephrun(self.path, "token=" + self.VALUE, FAIL_WITH_TOKEN="1")
        self.assertEqual(r.returncode, 1)
        self.assertIn("refused <secret:token>", r.stderr)
        self.assertIn("parameter 'token' was given on the command line", r.stderr)
        self.assert_hidden(r)

    def test_a_secret_too_short_to_redact_is_refused_without_showing_it(self):
        r = self.ephrun(self.path, "token=abc", "--dry-run", "--json")
        self.assertEqual(r.returncode, 2)
        self.assertIn("a secret needs at least 4 characters", r.stderr)
        self.assertNotIn("abc", r.stdout + r.stderr)
        self.assertFalse(json.loads(r.stdout)["ok"])

    def on_terminal(self, answer):
        """Runs the recipe on a pseudo-terminal; writes `answer` once the prompt shows."""
        pid, fd = pty.fork()
        if pid == 0:
            os.chdir(self.dir)
            os.execve(BIN, [BIN, self.path], env(EPHRUN_HOME=self.home, FAIL_WITH_TOKEN="1"))
        out = b""
        deadline = time.monotonic() + 30
        sent = False
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            if not sent and b"token (API token): " in out:
                os.write(fd, answer)
                sent = True
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:  # still waiting after the deadline: a hang, not an answer
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        os.close(fd)
        text = out.decode(errors="replace")
        self.assertTrue(sent, text)
        return os.waitstatus_to_exitcode(status), text

    def test_prompted_on_a_terminal_without_echo(self):
        code, text = self.on_terminal(self.VALUE.encode() + b"\n")
        self.assertEqual(code, 1, text)
        self.assertIn("len=%d" % len(self.VALUE), text)
        self.assertIn("refused <secret:token>", text)
        self.assertNotIn(self.VALUE, text)

    def test_ctrl_c_at_the_prompt_stops_the_run(self):
        code, text = self.on_terminal(b"\x03")
        self.assertEqual(code, 130, text)
        self.assertIn("interrupted by SIGINT", text)

    def test_a_secret_default_must_name_a_source(self):
        r = self.ephrun(self.write("lit.lua", recipe('    token = { type = "secret", default = "hunter22" },')))
        self.assertEqual(r.returncode, 1)
        self.assertIn("lit.lua:2: parameter 'token': a secret's default must be", r.stderr)
        path = self.write("def.lua", recipe('    token = { type = "secret", default = "@env:DEF_TOK" },',
                                            '    print("got=" .. tostring(p.token ~= nil))'))
        r = self.ephrun(path, DEF_TOK=self.VALUE)
        self.assertIn("got=true", r.stdout)
        r = self.ephrun(path)
        self.assertIn("got=false", r.stdout)
        r = self.ephrun(path, "--help")
        self.assertIn("default: @env:DEF_TOK", r.stdout)
        self.assertIn("name=@env:VAR", r.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
