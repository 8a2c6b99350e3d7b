-- The --dry-run session against the real one. Without --dry-run: connects to a
-- real sshd and lists every method the real session has (its native methods and
-- the Lua wrappers) that the plan session lacks. With --dry-run: calls every
-- method of the native session on the session `connect` returns, which must be
-- the plan session, and prints what each returned.
local ephrun = require "ephrun"

-- Arguments for each method; a method not named here is called without any.
local ARGS = {
  run = { "echo planned" },
  run_detached = { "sleep 600", { log = "/tmp/planned.log" } },
  job_status = { { pid = 1, log = "/tmp/planned.log" } },
  job_tail = { { pid = 1, log = "/tmp/planned.log" }, 5 },
  job_wait = { { pid = 1, log = "/tmp/planned.log" }, 1 },
  upload = { "@SRC@/Makefile", "up/Makefile" },
  download = { "remote/file", "@OUT@/file" },
  put_string = { "remote/put.txt", "twelve bytes", 384 },
  get_string = { "remote/get.txt" },
  mkdir_p = { "remote/dir", 448 },
  stat = { "remote/stat" },
  remove = { "remote/gone" },
  sync = { "@SRC@", "app", { exclude = { "node_modules" } } },
  fetch = { "app/dist", "@OUT@/dist" },
}

local function names(t, into)
  for k, v in pairs(t) do
    if type(v) == "function" and not k:match("^__") then into[k] = true end
  end
  return into
end

return ephrun.recipe {
  name = "plan_session",
  params = {
    port = { type = "number", default = 22 }, user = { default = "" }, key_file = { default = "" },
    host_key = { default = "" }, src = { default = "" }, out = { default = "" },
  },
  run = function(p)
    local sh = ephrun.ssh.connect { host = "127.0.0.1", port = p.port, user = p.user, key_file = p.key_file,
      host_key = p.host_key, timeout = "20s" }
    if not sh.dry_run then
      local real = names(getmetatable(sh), names(getmetatable(sh._s).__index, {}))
      local plan = ephrun.ssh.plan_session("127.0.0.1")
      local missing, n = {}, 0
      for name in pairs(real) do
        n = n + 1
        if type(plan[name]) ~= "function" then missing[#missing + 1] = name end
      end
      table.sort(missing)
      sh:close()
      print(("real session: %d methods; missing on the plan session: %s"):format(n,
        #missing == 0 and "none" or table.concat(missing, " ")))
      return
    end
    local methods = names(debug.getregistry()["ephrun.ssh.Session"].__index, {})
    local sorted = {}
    for name in pairs(methods) do sorted[#sorted + 1] = name end
    -- close last: the calls before it use the open session
    table.sort(sorted, function(a, b)
      if (a == "close") ~= (b == "close") then return b == "close" end
      return a < b
    end)
    for _, name in ipairs(sorted) do
      local args = {}
      for i, a in ipairs(ARGS[name] or {}) do
        args[i] = type(a) == "string" and a:gsub("@SRC@", p.src):gsub("@OUT@", p.out) or a
      end
      local r = sh[name](sh, table.unpack(args))
      print(("called %s -> %s"):format(name, type(r) == "table" and ephrun.json.encode(r) or tostring(r)))
    end
  end,
}
