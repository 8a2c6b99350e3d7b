--- cloud-init user-data for a run's instance: the per-run host key
--- (`ssh_keys`), the run's authorized key, and a lifetime timer that powers
--- the machine off at expiry even if ephrun is gone. It never carries
--- credentials: secrets reach the instance through the SSH channel only.
---@class ephrun.cloudinit
local M = {}

local function indent(text, pad)
  local out = {}
  for line in (text:gsub("\n$", "") .. "\n"):gmatch("([^\n]*)\n") do out[#out + 1] = pad .. line end
  return table.concat(out, "\n")
end

local function yaml_string(s)
  return '"' .. tostring(s):gsub('[\\"]', "\\%0") .. '"'
end

--- Builds `#cloud-config` user-data.
---@param opts {host_key: {private_key: string, public_key: string}, authorized_keys: string[], ttl?: number|false, comment?: string, runcmd?: string[]}
---@return string
function M.user_data(opts)
  if type(opts) ~= "table" or type(opts.host_key) ~= "table" then
    error("cloudinit.user_data expects {host_key=pair, authorized_keys={...}}", 2)
  end
  local lines = { "#cloud-config" }
  if opts.comment then lines[#lines + 1] = "# " .. opts.comment:gsub("\n", " ") end
  lines[#lines + 1] = "ssh_deletekeys: true"
  lines[#lines + 1] = "ssh_genkeytypes: []"
  lines[#lines + 1] = "ssh_keys:"
  lines[#lines + 1] = "  ed25519_private: |"
  lines[#lines + 1] = indent(opts.host_key.private_key, "    ")
  lines[#lines + 1] = "  ed25519_public: " .. yaml_string(opts.host_key.public_key)
  lines[#lines + 1] = "ssh_authorized_keys:"
  for _, k in ipairs(opts.authorized_keys or {}) do lines[#lines + 1] = "  - " .. yaml_string(k) end
  local cmds = {}
  if opts.ttl then
    -- shutdown takes whole minutes; round up so the instance never ends early.
    local minutes = math.max(1, math.ceil(opts.ttl / 60))
    cmds[#cmds + 1] = ("shutdown -h +%d 'ephrun: lifetime reached'"):format(minutes)
  end
  for _, c in ipairs(opts.runcmd or {}) do cmds[#cmds + 1] = c end
  if #cmds > 0 then
    lines[#lines + 1] = "runcmd:"
    for _, c in ipairs(cmds) do lines[#lines + 1] = "  - [sh, -c, " .. yaml_string(c) .. "]" end
  end
  return table.concat(lines, "\n") .. "\n"
end

local function unquote(s)
  s = s:match("^%s*(.-)%s*$")
  if s:sub(1, 1) == '"' and s:sub(-1) == '"' then
    return (s:sub(2, -2):gsub("\\(.)", "%1"))
  end
  return s
end

--- Reads back what `user_data` wrote (for providers that apply it themselves,
--- like `local`): `{host_private, host_public, authorized_keys, lifetime_minutes}`.
---@param text string
---@return {host_private?: string, host_public?: string, authorized_keys: string[], lifetime_minutes?: integer}
function M.parse(text)
  local r = { authorized_keys = {} }
  local section, priv
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    if priv then
      local body = line:match("^    (.*)$")
      if body then
        priv[#priv + 1] = body
        goto continue
      end
      r.host_private = table.concat(priv, "\n") .. "\n"
      priv = nil
    end
    if line:match("^%S") then section = line:match("^([%w_]+):") end
    if section == "ssh_keys" then
      if line:match("^  ed25519_private: |%s*$") then priv = {} end
      local pub = line:match("^  ed25519_public:%s*(.+)$")
      if pub then r.host_public = unquote(pub) end
    elseif section == "ssh_authorized_keys" then
      local k = line:match("^  %- (.+)$")
      if k then r.authorized_keys[#r.authorized_keys + 1] = unquote(k) end
    elseif section == "runcmd" then
      local m = line:match("shutdown %-h %+(%d+)")
      if m then r.lifetime_minutes = tonumber(m) end
    end
    ::continue::
  end
  if priv then r.host_private = table.concat(priv, "\n") .. "\n" end
  return r
end

return M
