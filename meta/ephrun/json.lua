---@meta
--- ephrun.json: JSON encode/decode. Arrays decode with a marker so they
--- encode back as arrays, even when empty.
---@class ephrun.json
---@field null lightuserdata stands for JSON null
local json = {}

--- Encodes a Lua value. Tables with keys 1..n are arrays, others objects.
---@param value any
---@param opts? {pretty?: boolean}
---@return string
function json.encode(value, opts) end

--- Decodes JSON text. On invalid input returns nil and a message with the
--- line, column and byte offset.
---@param text string
---@return any value, string? err
function json.decode(text) end

--- Marks `t` (or a new table) to encode as a JSON array.
---@param t? table
---@return table
function json.array(t) end

return json
