--- The local provider: an "instance" is an sshd on 127.0.0.1 with this run's
--- keys, for trying recipes with no cloud account. It costs nothing.
local M = {}

--- Hourly price: always 0.
---@return number
function M.price(_spec, _opts)
  return 0
end

--- Launching real local instances is not implemented yet; --dry-run works.
function M.launch(_spec, _opts)
  error("the local provider cannot launch instances yet; use --dry-run to see the plan", 0)
end

function M.destroy(_inst, _opts) end

return M
