--- size-sweep: the same job on several plans side by side, each instance
--- destroyed after, then a table (Markdown, CSV, JSON) and a chart (SVG, and
--- PNG where gnuplot is installed) of wall time and cost per plan, with the
--- cheapest plan that met the target.
---
--- Each plan runs in its own task: launch, sync `src`, run `setup` once, then
--- `job` `repeat` times, measured (sh:run{measure=true}); wall time is the
--- median of the repeats, peak memory and swap the highest seen, CPU the mean.
--- A job that fails on a plan (say killed by the OOM killer) marks that plan
--- as not meeting the target; it does not stop the other plans.
local ephrun = require "ephrun"

local function median(xs)
  local s = {}
  for i, x in ipairs(xs) do s[i] = x end
  table.sort(s)
  local n = #s
  if n == 0 then return 0 end
  if n % 2 == 1 then return s[(n + 1) / 2] end
  return (s[n / 2] + s[n / 2 + 1]) / 2
end

local function mb(bytes) return (bytes or 0) / 1048576 end

-- vCPU, memory and price of a plan: the provider's own plan list where it has one.
local function plan_facts(cloud, plan, region)
  local info = cloud.impl.plan_info and cloud.impl.plan_info({ plan = plan, region = region }, cloud.opts) or {}
  local price = info.price
  if price == nil then price = cloud:price { plan = plan, region = region } end
  return { vcpu = info.vcpu, memory_mb = info.memory_mb, price = price }
end

-- One plan: launch, sync, setup, the repeats; returns its row.
local function sweep_one(cloud, p, plan)
  local facts = plan_facts(cloud, plan, p.region)
  local box <close> = cloud:launch { plan = plan, region = p.region, image = p.image ~= "" and p.image or nil,
    ttl = p.ttl }
  local sh <close> = box:ssh { deadline = p.ssh_deadline }
  sh:sync(p.src, "job", { exclude = { "node_modules" } })
  local row = { plan = plan, vcpu = facts.vcpu, memory_mb = facts.memory_mb, price_hour = facts.price,
    times = {}, peak_mem = 0, peak_swap = 0, cpu = {}, ok = true, warnings = {}, samples = {} }
  if p.setup ~= "" then sh:run("cd job && " .. p.setup) end
  for i = 1, p["repeat"] do
    local r = sh:run("cd job && " .. p.job, { measure = true, check = false, prefix = "[" .. plan .. "] " })
    row.times[i] = r.duration
    row.peak_mem = math.max(row.peak_mem, r.peak_mem or 0)
    row.peak_swap = math.max(row.peak_swap, r.peak_swap or 0)
    row.cpu[i] = r.cpu_avg or 0
    row.vcpu = row.vcpu or r.vcpu
    row.memory_mb = row.memory_mb or (r.mem_total and math.floor(mb(r.mem_total) + 0.5))
    -- the last repeat's series, for the JSON report and anyone charting it
    row.series = {}
    for j, smp in ipairs(r.samples or {}) do
      row.series[j] = { t = smp.t, cpu = smp.cpu, mem = smp.mem, swap = smp.swap, load = smp.load }
    end
    row.samples[i] = #row.series
    for _, w in ipairs(r.warnings or {}) do row.warnings[#row.warnings + 1] = w end
    if r.code ~= 0 or r.signal then
      row.ok = false
      row.failure = r.signal and ("killed by SIG" .. r.signal) or ("exit " .. r.code)
      break
    end
  end
  box:destroy()
  row.time = median(row.times)
  local s = 0
  for _, c in ipairs(row.cpu) do s = s + c end
  row.cpu_avg = #row.cpu > 0 and s / #row.cpu or 0
  if row.price_hour then
    row.cost_run = row.price_hour * row.time / 3600
  end
  row.met = row.ok and (p.max_time <= 0 or row.time <= p.max_time)
  return row
end

-- The cheapest plan that met the target (then the faster one on a tie).
local function cheapest(rows)
  local best
  for _, r in ipairs(rows) do
    if r.met and r.cost_run then
      if not best or r.cost_run < best.cost_run or (r.cost_run == best.cost_run and r.time < best.time) then
        best = r
      end
    end
  end
  return best
end

local function fmt_money(x) return x and ("%.4f"):format(x) or "" end

-- A run of a few seconds costs a millionth of a dollar: keep three significant digits.
local function fmt_run_cost(x)
  if not x then return "" end
  if x == 0 or x >= 0.01 then return fmt_money(x) end
  return ("%.3g"):format(x)
end

local COLUMNS = { "plan", "vcpu", "memory_mb", "time_s", "peak_mem_mb", "peak_swap_mb", "cpu_avg_pct",
  "cost_per_run_usd", "cost_per_hour_usd", "met_target", "note" }

local function note(r)
  local parts = {}
  if r.failure then parts[1] = r.failure end
  if r.warnings[1] then parts[#parts + 1] = r.warnings[1] end
  return table.concat(parts, "; ")
end

local function cells(r)
  return { r.plan, tostring(r.vcpu or "?"), tostring(r.memory_mb or "?"), ("%.2f"):format(r.time),
    ("%.1f"):format(mb(r.peak_mem)), ("%.1f"):format(mb(r.peak_swap)), ("%.0f"):format(r.cpu_avg),
    fmt_run_cost(r.cost_run), fmt_money(r.price_hour), r.met and "yes" or "no",
    note(r) }
end

local function markdown(rows, p, best)
  local out = { "# size-sweep: " .. p.job, "",
    ("%d plan(s), %d repeat(s) each; time is the median; target: %s"):format(#rows, p["repeat"],
      p.max_time > 0 and ("≤ " .. ephrun.time.format_duration(p.max_time)) or "none"), "",
    "| plan | vCPU | memory (MiB) | time (s) | peak mem (MiB) | peak swap (MiB) | CPU avg % | $/run | $/hour | met | note |",
    "|---|---|---|---|---|---|---|---|---|---|---|" }
  for _, r in ipairs(rows) do
    local c = cells(r)
    for i, v in ipairs(c) do c[i] = v:gsub("|", "\\|"):gsub("\n", " ") end
    out[#out + 1] = "| " .. table.concat(c, " | ") .. " |"
  end
  out[#out + 1] = ""
  out[#out + 1] = best and ("Cheapest plan that met the target: **%s** ($%s per run, %.2f s)."):format(
    best.plan, fmt_run_cost(best.cost_run), best.time) or "No plan met the target."
  return table.concat(out, "\n") .. "\n"
end

local function csv_field(v)
  v = tostring(v)
  if v:find('[",\n]') then return '"' .. v:gsub('"', '""') .. '"' end
  return v
end

local function csv(rows)
  local out = { table.concat(COLUMNS, ",") }
  for _, r in ipairs(rows) do
    local c = cells(r)
    for i, v in ipairs(c) do c[i] = csv_field(v) end
    out[#out + 1] = table.concat(c, ",")
  end
  return table.concat(out, "\n") .. "\n"
end

local function esc(s)
  return (tostring(s):gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"):gsub('"', "&quot;"))
end

-- One panel of horizontal bars: a value per plan, green when the plan met the target.
local function panel(out, rows, y0, title, value, label, limit)
  local W, left, bar_h = 560, 170, 22
  local max = limit or 0
  for _, r in ipairs(rows) do max = math.max(max, value(r) or 0) end
  if max <= 0 then max = 1 end
  out[#out + 1] = ('<text x="10" y="%d" font-weight="bold">%s</text>'):format(y0 + 14, esc(title))
  for i, r in ipairs(rows) do
    local y = y0 + 24 + (i - 1) * (bar_h + 6)
    local v = value(r)
    local w = v and math.max(1, (W - left - 90) * v / max) or 0
    out[#out + 1] = ('<text x="%d" y="%d" text-anchor="end">%s</text>'):format(left - 8, y + 16, esc(r.plan))
    out[#out + 1] = ('<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"><title>%s</title></rect>'):format(
      left, y, w, bar_h, r.met and "#3a9a4f" or "#b0b0b0", esc(r.plan .. ": " .. label(v)))
    out[#out + 1] = ('<text x="%.1f" y="%d">%s</text>'):format(left + w + 6, y + 16, esc(label(v)))
  end
  local bottom = y0 + 24 + #rows * (bar_h + 6)
  if limit and limit > 0 then
    local x = left + (W - left - 90) * limit / max
    out[#out + 1] = ('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#c0392b" stroke-dasharray="4 3"/>'):format(
      x, y0 + 20, x, bottom)
    out[#out + 1] = ('<text x="%.1f" y="%d" fill="#c0392b" font-size="11">target</text>'):format(x + 3, y0 + 30)
  end
  return bottom + 10
end

local function svg(rows, p)
  local body = {}
  local y = panel(body, rows, 30, "Wall time per run (median, s)", function(r) return r.time end,
    function(v) return ("%.2f s"):format(v or 0) end, p.max_time)
  y = panel(body, rows, y, "Cost per run (USD)", function(r) return r.cost_run end,
    function(v) return v and ("$" .. fmt_run_cost(v)) or "no price" end)
  local head = ('<svg xmlns="http://www.w3.org/2000/svg" width="560" height="%d" font-family="sans-serif" '
    .. 'font-size="13">\n<title>size-sweep: %s</title>\n<rect width="100%%" height="100%%" fill="white"/>\n'
    .. '<text x="10" y="18" font-size="15">size-sweep: %s</text>'):format(y + 10, esc(p.job), esc(p.job))
  return head .. "\n" .. table.concat(body, "\n") .. "\n</svg>\n"
end

-- The PNG chart is drawn by gnuplot (Debian's gnuplot-nox) where it is
-- installed: its data and script stay beside it, so it can be drawn again.
local GREEN, GREY = 0x3a9a4f, 0xb0b0b0

local function gp_string(s) return "'" .. tostring(s):gsub("'", "''") .. "'" end

local function chart_data(rows)
  local out = { "# n\tplan\ttime_s\tcost_per_run_usd\tcolour (met the target: green)" }
  for i, r in ipairs(rows) do
    out[#out + 1] = ("%d\t\"%s\"\t%.6f\t%s\t%d"):format(i, r.plan:gsub('"', "'"), r.time,
      r.cost_run and ("%.9g"):format(r.cost_run) or "NaN", r.met and GREEN or GREY)
  end
  return table.concat(out, "\n") .. "\n"
end

local function chart_script(rows, p)
  -- the time panel reaches the target too, so its line is always drawn inside
  local top = p.max_time
  for _, r in ipairs(rows) do top = math.max(top, r.time) end
  local target = p.max_time > 0 and ("set arrow 1 from graph 0, first %g to graph 1, first %g nohead dt 2 "
    .. "lw 2 lc rgb '#c0392b' front\nset label 1 'target' at graph 0.01, first %g offset 0,0.6 tc rgb '#c0392b'\n")
    :format(p.max_time, p.max_time, p.max_time) or ""
  return table.concat({
    "# Draws sweep.png from sweep.dat: gnuplot sweep.gp",
    "set terminal pngcairo size 800,600 noenhanced font 'sans,10'",
    "set output 'sweep.png'",
    "set multiplot layout 2,1 title " .. gp_string("size-sweep: " .. p.job),
    "set style fill solid 0.9 border -1",
    "set boxwidth 0.6",
    "set xrange [0.4:*]",
    "set grid ytics",
    "set title 'Wall time per run (median, s)'",
    ("set yrange [0:%g]"):format(top > 0 and top * 1.15 or 1),
    target .. "plot 'sweep.dat' using 1:3:5:xtic(2) with boxes lc rgb variable notitle",
    "unset arrow 1",
    "unset label 1",
    "set yrange [0:*]",
    "set title 'Cost per run (USD)'",
    "plot 'sweep.dat' using 1:4:5:xtic(2) with boxes lc rgb variable notitle",
    "unset multiplot", "" }, "\n")
end

-- Writes sweep.dat and sweep.gp and runs gnuplot; the name of the PNG, or nil.
local function write_png(rows, p)
  local fs = ephrun.fs
  local gnuplot = ephrun.proc.which("gnuplot")
  if not gnuplot then
    ephrun.log.info("size-sweep: no PNG chart (gnuplot is not installed: apt-get install gnuplot-nox); sweep.svg has it")
    return nil
  end
  assert(fs.write(fs.join(p.out, "sweep.dat"), chart_data(rows)))
  assert(fs.write(fs.join(p.out, "sweep.gp"), chart_script(rows, p)))
  local r = ephrun.proc.run({ gnuplot, "sweep.gp" }, { cwd = p.out, stream = false, check = false, timeout = 60 })
  if not r or not r.ok then
    ephrun.log.warn("size-sweep: gnuplot could not draw sweep.png (%s); sweep.svg has the chart",
      r and (r.stderr or ""):gsub("%s+$", "") or "it did not start")
    return nil
  end
  return "sweep.png"
end

-- Writing and printing the report is an effect: a dry-run names the files and
-- writes none (its figures would be placeholders).
local function write_report(rows, p, best)
  local fs = ephrun.fs
  local files = { "sweep.md", "sweep.csv", "sweep.json", "sweep.svg", "sweep.png (where gnuplot is installed)" }
  ephrun.effect {
    kind = "write", what = "size-sweep report in " .. p.out .. ": " .. table.concat(files, ", "),
    where = "local",
    run = function()
      assert(fs.mkdir_p(p.out))
      assert(fs.write(fs.join(p.out, "sweep.md"), markdown(rows, p, best)))
      assert(fs.write(fs.join(p.out, "sweep.csv"), csv(rows)))
      assert(fs.write(fs.join(p.out, "sweep.json"), ephrun.json.encode {
        job = p.job, max_time = p.max_time, cheapest = best and best.plan or ephrun.json.null, plans = rows }))
      assert(fs.write(fs.join(p.out, "sweep.svg"), svg(rows, p)))
      write_png(rows, p)
      io.stdout:write(markdown(rows, p, best))
      return true
    end,
    placeholder = true,
  }
end

return ephrun.recipe {
  name = "size-sweep",
  summary = "Run one job on several plans side by side and show which is the cheapest that is fast enough.",
  params = {
    provider = { default = "local", doc = "where the instances run",
      choices = ephrun.cloud.builtin_providers { creates = true } },
    plans = { type = "list", default = { "local-1c-512m", "local-2c-1g", "local-2c-2g" },
      doc = "plans to compare, one instance each, in parallel" },
    region = { default = "ewr", doc = "provider region (ewr is Vultr's; on AWS say eu-west-1 or the like)" },
    image = { default = "", doc = "OS image of every instance (Vultr os_id, AWS ami-...; empty: the provider's default)" },
    src = { type = "path", default = ".", doc = "local directory synced to each instance as job/" },
    setup = { default = "", doc = "command run once per instance in job/ before the job (empty: none)" },
    job = { default = "make", doc = "the job, run in job/ and measured" },
    ["repeat"] = { type = "number", default = 1, min = 1, max = 100, doc = "runs of the job per plan (time: median)" },
    max_time = { type = "duration", default = "0s", min = 0, doc = "target wall time per run (0: none)" },
    out = { type = "path", default = "size-sweep", doc = "local folder for sweep.md, .csv, .json, .svg (and .png with gnuplot)" },
    ttl = { type = "duration", default = "1h", doc = "hard lifetime of each instance" },
    ssh_deadline = { type = "duration", default = "5m", doc = "how long to wait for SSH once an instance runs" },
  },
  run = function(p)
    ephrun.phase("check")
    local st = ephrun.fs.stat(p.src, { follow = true })
    if not st or st.type ~= "dir" then
      error(("src=%s: not a directory; pass src=DIR (the job's files)"):format(p.src), 0)
    end
    if #p.plans == 0 then error("plans=: give at least one plan, comma-separated", 0) end
    p["repeat"] = math.floor(p["repeat"])
    local cloud = ephrun.provider(p.provider)
    ephrun.phase("sweep")
    local rows = ephrun.parallel(p.plans, function(plan) return sweep_one(cloud, p, plan) end)
    ephrun.phase("report")
    local best = cheapest(rows)
    -- the table of a dry-run would be placeholders: the report step prints and writes it
    write_report(rows, p, best)
    return rows
  end,
}
