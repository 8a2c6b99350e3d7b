-- A provider test double for the journal tests: an "instance" is a JSON file in
-- $FAKE_CLOUD_DIR. It follows the provider contract (launch, list{tags}, idempotent destroy).
local ephrun = require "ephrun"
local M = {}
local function dir() return assert(os.getenv("FAKE_CLOUD_DIR"), "FAKE_CLOUD_DIR is not set") end
function M.price() return 0 end
function M.launch(spec)
  local id = ("fake-%d-%04d"):format(os.time(), math.random(0, 9999))
  local inst = { id = id, tags = spec.tags or {}, state = "running", created = ephrun.time.now() }
  assert(ephrun.fs.write(dir() .. "/" .. id .. ".json", ephrun.json.encode(inst)))
  -- FAKE_HANG_AFTER_CREATE: the instance exists but the create call never returns
  -- (the launcher is killed mid-create in the test).
  -- FAKE_WAIT_AFTER_CREATE=FILE: the create returns once FILE exists (the test holds the
  -- journal's write lock meanwhile).
  local wait_for = os.getenv("FAKE_WAIT_AFTER_CREATE")
  if wait_for then
    print("CREATED " .. id)
    io.stdout:flush()
    while not ephrun.fs.exists(wait_for) do ephrun.time.sleep(0.02) end
  end
  if os.getenv("FAKE_HANG_AFTER_CREATE") then
    print("CREATED " .. id)
    io.stdout:flush()
    ephrun.time.sleep(120)
  end
  return inst
end
function M.list(filter)
  -- FAKE_LIST_WAIT=FILE: the listing answers once FILE exists (an API that does not answer).
  local wait_for = os.getenv("FAKE_LIST_WAIT")
  while wait_for and not ephrun.fs.exists(wait_for) do ephrun.time.sleep(0.05) end
  local out = {}
  for _, name in ipairs(ephrun.fs.list(dir()) or {}) do
    if name:match("%.json$") then
      local inst = ephrun.json.decode(assert(ephrun.fs.read(dir() .. "/" .. name)))
      local match = true
      for k, v in pairs((filter or {}).tags or {}) do
        if inst.tags[k] ~= v then match = false end
      end
      if match then out[#out + 1] = inst end
    end
  end
  return out
end
function M.destroy(inst)
  local path = dir() .. "/" .. inst.id .. ".json"
  if ephrun.fs.exists(path) then assert(ephrun.fs.remove(path)) end
end
return M
