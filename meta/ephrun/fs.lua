---@meta
--- ephrun.fs: local files. Reads act in every mode; writes, appends, mkdir,
--- removals and chmod are effects: under --dry-run they are recorded in the
--- plan (kind "write") and return true without touching anything.
--- Expected failures return `nil, message, code` (code is errno's name, e.g. "ENOENT").
---@class ephrun.fs
local fs = {}

---@class ephrun.fs.WriteOpts
---@field mode? string|integer permissions, "0644" by default; applied exactly (umask aside). Write modes as strings: Lua has no octal literals
---@field atomic? boolean write a temporary file beside the target, fsync, rename over it (default true)
---@field exclusive? boolean create only: fail with code "EEXIST" when the target exists (the file is linked into place, so it appears complete or not at all)

---@class ephrun.fs.Stat
---@field size integer bytes
---@field mtime number seconds since the epoch
---@field mode integer permission bits (07777), e.g. 420 for 0644
---@field perm string the same as octal text, "0644"
---@field type "file"|"dir"|"link"|"other"

--- The whole file.
---@param path string
---@return string|nil data, string? err, string? code
function fs.read(path) end

--- Writes `data` to `path`, by default atomically (readers see the old or the
--- new content, never a mix) with mode 0644.
---@param path string
---@param data string
---@param opts? ephrun.fs.WriteOpts
---@return true|nil ok, string? err, string? code
function fs.write(path, data, opts) end

--- Appends `data`, creating the file (with `opts.mode`, default 0644) if needed.
---@param path string
---@param data string
---@param opts? {mode?: string|integer}
---@return true|nil ok, string? err, string? code
function fs.append(path, data, opts) end

--- Creates `path` and any missing parents; an existing directory is fine.
---@param path string
---@param mode? string|integer default "0755"
---@return true|nil ok, string? err, string? code
function fs.mkdir_p(path, mode) end

--- True if `path` exists (following symlinks: a dangling link does not).
---@param path string
---@return boolean
function fs.exists(path) end

--- Size, mtime, mode and type. A symlink reports type "link" unless `follow`.
---@param path string
---@param opts? {follow?: boolean}
---@return ephrun.fs.Stat|nil st, string? err, string? code
function fs.stat(path, opts) end

--- Entry names in `dir`, sorted, without "." and "..".
---@param dir string
---@return string[]|nil names, string? err, string? code
function fs.list(dir) end

--- Removes a file, symlink or empty directory; any directory tree with
--- `recursive` (symlinks inside are removed, never followed; other mounted
--- file systems are left alone). A path that does not exist is not an error.
---@param path string
---@param opts? {recursive?: boolean}
---@return true|nil ok, string? err, string? code
function fs.remove(path, opts) end

--- Creates a private (0700) directory `$TMPDIR/<prefix>XXXXXX` and pushes its
--- recursive removal on the run's cleanup stack, unless `keep`. Under
--- --dry-run it creates nothing and returns a path that does not exist.
---@param prefix? string default "ephrun-"
---@param opts? {keep?: boolean}
---@return string|nil path, string? err, string? code
function fs.tempdir(prefix, opts) end

--- Paths matching `pattern`, sorted. `*` and `?` match within one path
--- component and never a leading "."; `[abc]` is a class; a component that is
--- exactly `**` matches zero or more directories (not hidden ones, not through
--- symlinked directories). Relative patterns give relative paths.
---@param pattern string
---@return string[]
function fs.glob(pattern) end

--- Hex digest of the file, read in 1 MiB chunks off the Lua thread (other
--- tasks run meanwhile; cancellation stops it). Raises for an unknown algorithm.
---@param path string
---@param algo? string "sha256" (default), "sha512", "sha1", "md5", any OpenSSL digest name
---@return string|nil hex, string? err, string? code
function fs.hash(path, algo) end

--- Hex digest of a string.
---@param s string
---@param algo? string default "sha256"
---@return string
function fs.hash_string(s, algo) end

--- Standard base64 (with padding) of a string.
---@param s string
---@return string
function fs.base64_encode(s) end

--- Decodes standard base64 (whitespace between groups allowed).
---@param s string
---@return string|nil data, string? err
function fs.base64_decode(s) end

--- Changes permissions.
---@param path string
---@param mode string|integer "0755", or the number's value (tonumber("755", 8))
---@return true|nil ok, string? err, string? code
function fs.chmod(path, mode) end

--- The canonical absolute path (symlinks resolved).
---@param path string
---@return string|nil path, string? err, string? code
function fs.realpath(path) end

--- The last component: basename("/a/b/") == "b".
---@param path string
---@return string
function fs.basename(path) end

--- All but the last component: dirname("/a/b") == "/a", dirname("a") == ".".
---@param path string
---@return string
function fs.dirname(path) end

--- Joins parts with single slashes. Unlike Python, a later absolute part does
--- not discard the earlier ones: join("/srv", "/etc") == "/srv/etc".
---@param ... string
---@return string
function fs.join(...) end

return fs
