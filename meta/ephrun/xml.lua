---@meta
--- ephrun.xml: XML (EC2's Query API replies) to Lua tables and back.
---
--- Decoding rules:
--- - namespace prefixes are dropped from names (`ec2:item` is `item`), and so are xmlns attributes;
--- - an element without child elements is its text, always a string (`"16"`, `"true"`);
---   an empty element whose name ends in `Set` is an empty array (`<groupSet/>`);
--- - an element whose children are all `<item>` (or all `<member>`) is the array of them:
---   `r.reservationSet[1].instancesSet[1].instanceId`;
--- - otherwise an element is a table keyed by child name; a name that repeats, is `item`
---   or `member`, or is listed in `opts.arrays` maps to an array of its occurrences;
--- - attributes are in `_attr`, text beside child elements in `_text`; an element with
---   attributes and only text is `{_text = ..., _attr = {...}}`.
---@class ephrun.xml
local xml = {}

--- Decodes a document; returns the root element's value and its name, or nil
--- and "xml: <what> at offset N (line L, column C)".
---@param text string
---@param opts? {arrays?: string[]} element names always decoded as arrays (e.g. {"Contents"})
---@return any|nil value, string root_or_err
function xml.decode(text, opts) end

--- Encodes a table as a document under `root`: keys become child elements (sorted by name),
--- an array repeats its element (under a key ending in `Set` it becomes `<item>` children),
--- `_attr` gives attributes and `_text` text; numbers and booleans become text.
--- Raises for an array directly inside an array and for values XML cannot hold.
---@param value table|string|number|boolean
---@param root string
---@return string
function xml.encode(value, root) end

return xml
