---@meta
--- The provider contract: what a module in `providers/<name>.lua` returns so that
--- `ephrun.provider(name, opts)` can wrap it in the lifecycle (keys, user-data,
--- tags, journal, cleanup stack, pinned host key). `docs/providers.md` lists the
--- same functions with the same signatures (tests/integration/test_docs.py checks
--- both ways), and tests/lua/provider_conformance_spec.lua runs every built-in
--- provider against it.
---
--- One calling convention: every function takes its subject first (a spec, an
--- instance, an id, a filter), then what the call needs (a state, a plan, a
--- deadline in seconds), and last `opts`, the provider options table given to
--- `ephrun.provider(name, opts)` (never nil; `{}` when none were given).
---
--- Errors are raised as structured errors (`require("ephrun.errors").raise{kind=, message=}`):
--- the lifecycle decides on `kind`/`retry` only, never on the text, so a destroy is
--- retried while the error says `retry` (kinds `locked`, `rate_limited`, `server`,
--- `network`) and fails at once otherwise. A function the provider cannot do is left
--- out: the lifecycle then says "provider 'x' cannot ..." and names the built-ins that can.
---
--- Under `--dry-run` no provider function is called except `price`, `plan_info`,
--- `plan_details`, `preflight`, `destroy_deadline` and `attach` (which must change nothing).

---@alias ephrun.provider.State "pending"|"running"|"stopping"|"stopped"|"terminated"

--- An instance as a provider returns it: a plain table (every field that is not
--- a function is journalled, and `destroy` must work from that copy alone).
---@class ephrun.provider.Instance
---@field id string the provider's id
---@field state ephrun.provider.State every provider maps its own states onto these five
---@field tags table<string,string> at least `ephrun-run`, `ephrun-recipe`, `ephrun-expires`
---@field host? string as `ssh_endpoint` gives it
---@field port? integer
---@field user? string
---@field kind? string "instance" (default), or another resource `list` returns (Vultr's "ssh-key", AWS's "key-pair" and "security-group")

---@class ephrun.provider.LaunchSpec
---@field plan? string the provider's size name
---@field region? string
---@field image? string
---@field snapshot? string a snapshot id to boot from
---@field ttl? number lifetime in seconds; nil for none
---@field tags table<string,string> put on every resource made for it
---@field label? string
---@field user_data string cloud-init text (host key, authorized key, lifetime timer)
---@field client_token? string the journal intent's idempotency token (AWS sends it as ClientToken)
---@field volumes? {size: integer, type?: string, device?: string, iops?: integer, throughput?: integer}[] extra block volumes, deleted with the instance (aws: EBS)
---@field boot_delay? number local only: simulated boot time

---@class ephrun.provider.Endpoint
---@field host string
---@field port integer
---@field user string

---@class ephrun.provider.Snapshot
---@field id string
---@field status string "pending" until "complete"
---@field description? string

---@class ephrun.Provider
---@field ttl_effect "ends billing"|"stops the CPU only"|"none" what the instance's lifetime timer does when it fires (AWS terminates the instance: "ends billing"; a halted Vultr instance still bills: "stops the CPU only")
---@field static? boolean true for a provider of existing servers: `cloud:launch` attaches, nothing is journalled or destroyed
---@field price_basis? string how `price` is computed, printed under the launch step
local Provider = {}

--- Creates one instance and returns at once (its state may be `pending`). Every
--- resource it makes carries `spec.tags`.
---@param spec ephrun.provider.LaunchSpec
---@param opts table
---@return ephrun.provider.Instance
function Provider.launch(spec, opts) end

--- The instance `id`, or nil when the cloud does not know it (any more).
---@param id string
---@param opts table
---@return ephrun.provider.Instance|nil
function Provider.get(id, opts) end

--- Instances whose tags include every pair in `filter.tags` (all when none are given);
--- `ephrun reap` finds what a killed run left through it.
---@param filter {tags?: table<string,string>}
---@param opts table
---@return ephrun.provider.Instance[]
function Provider.list(filter, opts) end

--- Ends the instance. Idempotent: one already gone is success. Works with an
--- instance from `launch`, `get` or `list`, or one rebuilt from the journal.
---@param inst ephrun.provider.Instance
---@param opts table
function Provider.destroy(inst, opts) end

--- Polls until the instance is in `state` and returns it; raises (`timeout`) when
--- `deadline` seconds pass, and (`not_found`) when it can no longer get there.
---@param inst ephrun.provider.Instance
---@param state ephrun.provider.State
---@param deadline? number seconds; nil for the provider's default
---@param opts table
---@return ephrun.provider.Instance
function Provider.wait(inst, state, deadline, opts) end

--- Hourly USD price of an instance of `spec`, or nil when unknown (the plan's
--- worst case then reads "unknown"). Raises (`invalid`) for a plan that does not exist.
---@param spec ephrun.provider.LaunchSpec
---@param opts table
---@return number|nil
function Provider.price(spec, opts) end

--- Optional. vCPU, memory (MiB) and hourly price of `spec.plan`, for tables that
--- compare plans (recipes/size-sweep.lua); nil when the plan is unknown.
---@param spec ephrun.provider.LaunchSpec
---@param opts table
---@return {plan: string, vcpu: integer, memory_mb: integer, price: number}|nil
function Provider.plan_info(spec, opts) end

--- Optional. More lines for the launch step of the plan (what else the launch
--- makes, e.g. AWS's EventBridge Scheduler timer, or why it does not); called
--- in both modes, before the launch, so it may read but must change nothing.
---@param spec ephrun.provider.LaunchSpec
---@param opts table
---@return string[]
function Provider.plan_details(spec, opts) end

--- Where `instance:ssh()` connects.
---@param inst ephrun.provider.Instance
---@param opts table
---@return ephrun.provider.Endpoint
function Provider.ssh_endpoint(inst, opts) end

--- Optional. A shell command that removes the instance by hand, printed when a
--- destroy fails or with `keep=true`.
---@param inst ephrun.provider.Instance
---@param opts table
---@return string
function Provider.destroy_hint(inst, opts) end

--- Optional. The run leaves `inst` running (`instance:detach`): keep what it
--- still needs past the run's end (AWS: the run's security group).
---@param inst ephrun.provider.Instance
---@param opts table
function Provider.detach(inst, opts) end

--- Optional. After `ephrun finish` terminated a detached instance: remove what
--- `detach` kept for it.
---@param inst ephrun.provider.Instance
---@param opts table
function Provider.release(inst, opts) end

--- Optional. Checks settings and credentials before anything is made (also under
--- `--dry-run`, where a missing secret becomes a plan line).
---@param opts table
function Provider.preflight(opts) end

--- Optional. How long `instance:destroy()` retries (seconds or a duration; default 10m).
---@param opts table
---@return number|string
function Provider.destroy_deadline(opts) end

--- Optional. For a `static` provider: the instance table of an existing server
--- (no network is used).
---@param spec table
---@param opts table
---@return ephrun.provider.Instance
function Provider.attach(spec, opts) end

--- Optional. Starts a snapshot of the instance and returns its id.
---@param inst ephrun.provider.Instance
---@param sopts {description?: string}
---@param opts table
---@return string id
function Provider.snapshot(inst, sopts, opts) end

--- Optional. Polls until snapshot `id` is `complete` and returns it.
---@param id string
---@param deadline? number seconds
---@param opts table
---@return ephrun.provider.Snapshot
function Provider.wait_snapshot(id, deadline, opts) end

--- Optional. The snapshot `id`, or nil when it is gone.
---@param id string
---@param opts table
---@return ephrun.provider.Snapshot|nil
function Provider.get_snapshot(id, opts) end

--- Optional. Snapshots, those described as `filter.description` when given.
---@param filter {description?: string}
---@param opts table
---@return ephrun.provider.Snapshot[]
function Provider.snapshots(filter, opts) end

--- Optional. Deletes snapshot `id`; idempotent.
---@param id string
---@param opts table
function Provider.delete_snapshot(id, opts) end

--- Optional. A shell command that deletes snapshot `id` by hand.
---@param id string
---@param opts table
---@return string
function Provider.snapshot_hint(id, opts) end

--- Optional. Changes the instance's size to `plan` (stop, change, start as
--- needed) and waits until it runs with it.
---@param inst ephrun.provider.Instance
---@param plan string
---@param deadline? number seconds
---@param opts table
---@return ephrun.provider.Instance
function Provider.resize(inst, plan, deadline, opts) end

--- Optional. Powers the instance off and waits until it is `stopped`.
---@param inst ephrun.provider.Instance
---@param deadline? number seconds
---@param opts table
---@return ephrun.provider.Instance
function Provider.halt(inst, deadline, opts) end

--- Optional. Powers a halted instance on and waits until it is `running`.
---@param inst ephrun.provider.Instance
---@param deadline? number seconds
---@param opts table
---@return ephrun.provider.Instance
function Provider.start(inst, deadline, opts) end
return Provider
