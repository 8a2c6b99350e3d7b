---@meta
--- ephrun.keys: SSH key pairs and fingerprints.
---@class ephrun.keys
local keys = {}

---@class ephrun.keys.Pair
---@field private_key string openssh-key-v1 text (registered as a secret)
---@field public_key string "ssh-ed25519 AAAA... comment"
---@field fingerprint string "SHA256:..."

--- Generates an ed25519 key pair. The private key is redacted everywhere.
---@param comment? string
---@return ephrun.keys.Pair
function keys.generate(comment) end

--- Writes the private key to `path` (mode 0600) and the public key to `path.pub`.
--- A side effect: under --dry-run it is only recorded.
---@param pair ephrun.keys.Pair
---@param path string
function keys.write(pair, path) end

--- Reads an OpenSSH ed25519 or ecdsa private key file. RSA keys are refused
--- with an explanation (libssh2 1.10 lacks rsa-sha2-*, which OpenSSH ≥ 8.8 requires).
---@param path string
---@param passphrase? string
---@return {type: string, public_key: string, fingerprint: string, encrypted: boolean}
function keys.load(path, passphrase) end

--- The SHA256 fingerprint of a public-key line, as `ssh-keygen -l` prints it.
---@param public_line string
---@return string
function keys.fingerprint(public_line) end

return keys
