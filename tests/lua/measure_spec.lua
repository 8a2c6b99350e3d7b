-- ephrun.measure's figures and warnings from sampler records: swap growth,
-- the OOM killer, a full disk, CPU between samples. The sampler itself runs
-- against real instances in tests/integration/test_measure.py; these records
-- stand for a host with swap, which the test machines do not have.
local spec = require "ephrun.spec"
local it, eq, ok, contains = spec.it, spec.eq, spec.ok, spec.contains
local measure = require "ephrun.measure"

-- One sampler record: 2 cores, `busy` jiffies so far per core, memory and swap in kB.
local function record(t, busy, avail_kb, swap_free_kb, disk_used_kb, oom)
  return table.concat({
    "t " .. t,
    ("cpu %d 0 0 %d 0 0 0 0"):format(2 * busy, 2 * (1000 * t - busy)),
    ("cpu0 %d 0 0 %d 0 0 0 0"):format(busy, 1000 * t - busy),
    ("cpu1 %d 0 0 %d 0 0 0 0"):format(busy, 1000 * t - busy),
    "cpus 2 0-1",
    "load 1.50 1.00 0.50 2/100 42",
    ("mem 1000000 %d 2000000 %d"):format(avail_kb, swap_free_kb),
    "net 1000 2000",
    ("df %d 1000000 /"):format(disk_used_kb),
    ".",
  }, "\n") .. "\n" .. (oom and ("oomlog " .. oom .. "\n") or "")
end

it("a job that swapped and filled the disk gets both warnings, with figures from the records", function()
  local text = "oomlog 0\n" .. record(1, 100, 500000, 2000000, 500000) .. record(2, 1100, 100000, 1262500, 950000)
    .. record(3, 1600, 100000, 1500000, 960000, 0)
  local m = measure.parse(text)
  eq(#m.samples, 3)
  eq(m.peak_mem, 900000 * 1024)
  eq(m.mem_total, 1000000 * 1024)
  eq(m.peak_swap, 737500 * 1024)
  eq(m.vcpu, 2)
  eq(m.cpu_peak, 100)
  eq(m.cpu_avg, 75)
  eq(m.samples[2].cores[1], 100)
  eq(m.oom_kills, 0)
  eq(#m.warnings, 2)
  contains(m.warnings[1], "the job swapped 755.2 MB: a plan with more memory would be faster")
  contains(m.warnings[2], "disk / was 96% full during the job")
end)

it("an OOM kill seen in the kernel log is counted and warned about", function()
  local m = measure.parse("oomlog 3\n" .. record(1, 0, 900000, 2000000, 1000) .. record(2, 10, 900000, 2000000, 1000, 4))
  eq(m.oom_kills, 1)
  eq(#m.warnings, 1)
  contains(m.warnings[1], "the OOM killer ended 1 process(es)")
end)

it("a cut-off last record is dropped and no samples say so", function()
  local m = measure.parse(record(1, 0, 900000, 2000000, 1000) .. "t 2\ncpu 1 2 3")
  eq(#m.samples, 1)
  local none = measure.parse("")
  eq(#none.samples, 0)
  contains(none.warnings[1], "no samples were taken")
  ok(measure.summary(none):find("0 samples", 1, true))
end)

return spec.recipe("measure")
