// ephrun: runs recipes that rent a machine for one job and give it back.
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>

#include "runtime/embedded.hpp"
#include "runtime/log.hpp"
#include "runtime/runtime.hpp"
#include "version.hpp"

namespace {

constexpr const char* kUsage = R"(Usage: ephrun RECIPE [name=value ...] [options]

RECIPE is a path to a recipe file or the name of a built-in recipe.
`ephrun RECIPE --help` shows the recipe's parameters.

Commands (a Lua file of that name in the current directory runs instead):
  ephrun ls [--json]                          live resources, age, TTL left, cost so far
  ephrun reap [--dry-run] [--older-than 2h] [--expired] [--kept] [--yes]
                                              destroy expired and orphaned resources
                                              (--expired: only those past their TTL;
                                               --kept: kept ones too, before their TTL)
  ephrun reaper install|status|remove         a systemd timer or crontab line that
                                              runs `ephrun reap --expired --yes`
  ephrun history [--json]                     past runs
  ephrun status [RUN] [--json]                a detached run: instance, cost, TTL left, job, log
  ephrun attach RUN                           follow a detached run's log (Ctrl-C detaches)
  ephrun finish RUN [name=value ...]          its finish step, destroy, verify, cost
  ephrun new recipe NAME [--provider P]       write NAME.lua, a commented recipe to start from
  ephrun new provider NAME                    write providers/NAME.lua and its conformance spec
  ephrun check RECIPE... [name=value ...] [--json]
                                              syntax, recipe table, luacheck and a dry run
  ephrun meta install [DIR]                   LuaLS stubs and .luarc.json for editor completion
  ephrun pack add SOURCE [--ref REF] [--as NAME] | ls | update [NAME] | remove NAME | verify
                                              recipe packs pinned by ephrun.lock
  ephrun PACK/RECIPE [name=value ...]         runs a recipe of a locked pack
  ephrun lock ls [--json] | lock break NAME   team locks (ephrun.lock); break asks first

Options:
  --dry-run        print the plan (resources, commands, cost) and change nothing
  --json           with --dry-run, print the plan as JSON; on a real run, its outcome
                   and measured figures as JSON; with ls and history, JSON
  -y, --yes        do not ask for confirmation (the cost of a paid launch, ...)
  --max-cost USD   refuse a run whose worst-case cost is above USD (before
                   anything is made); a worst case within it needs no --yes
  --warn-cost USD  warn and notify when the run's worst case passes USD
  -v, --verbose    more output (-vv for trace); tracebacks on errors
  -q, --quiet      only warnings and errors
  --log-file FILE  also write a debug log to FILE
  --notify URL     POST start/success/failure to a Slack-compatible webhook
                   (a secret; EPHRUN_NOTIFY_URL also sets it)
  --list           list the built-in recipes and commands with their summaries
  --version        print the version
  -h, --help       this help, or the recipe's with RECIPE

Exit codes: 0 success, 1 recipe failed, 2 usage or parameter error,
            130 interrupted (SIGINT), 143 terminated (SIGTERM), 129 hangup (SIGHUP),
            141 output closed (SIGPIPE); os.exit(n) in a recipe: n, after the cleanups.
)";

// A dollar amount given to --max-cost/--warn-cost: a finite number >= 0.
std::optional<double> parse_usd(const std::string& flag, const std::string& text, bool& bad) {
  if (text.empty()) return std::nullopt;
  std::string t = text.starts_with("$") ? text.substr(1) : text;
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(t.c_str(), &end);
  if (t.empty() || end == t.c_str() || *end != '\0' || errno != 0 || !std::isfinite(v) || v < 0) {
    std::cerr << "ephrun: " << flag << " expects an amount of USD such as 5 or 12.50, not '" << text
              << "'\n";
    bad = true;
  }
  return v;
}

// Commands whose output --json shapes.
bool json_without_dry_run_ok(const std::string& recipe) {
  return recipe == "ephrun:ls" || recipe == "ephrun:history" || recipe == "ephrun:check" ||
         recipe == "ephrun:pack" || recipe == "ephrun:lock" || recipe == "ephrun:status";
}

// Commands that read their own words (`ephrun check a.lua b.lua n=v`): they
// get them as one `words` parameter, split on the unit separator, which no
// file name or value typed on a command line holds.
bool takes_words(const std::string& recipe) {
  return recipe == "ephrun:new" || recipe == "ephrun:check" || recipe == "ephrun:meta" ||
         recipe == "ephrun:status" || recipe == "ephrun:attach" || recipe == "ephrun:finish";
}

}  // namespace

int main(int argc, char** argv) {
  ephrun::install_sigpipe_handling();
  CLI::App app{"ephrun"};
  app.set_help_flag();
  ephrun::Options opts;
  std::string recipe;
  std::vector<std::string> args;
  bool version = false, list = false, quiet = false;
  int verbose = 0;
  app.add_option("recipe", recipe);
  app.add_option("args", args);
  app.add_flag("--dry-run", opts.dry_run);
  app.add_flag("--json", opts.json);
  app.add_flag("-y,--yes", opts.yes);
  app.add_flag("-v,--verbose", verbose);
  app.add_flag("-q,--quiet", quiet);
  app.add_option("--log-file", opts.log_file);
  app.add_option("--notify", opts.notify_url);
  std::string max_cost, warn_cost;
  app.add_option("--max-cost", max_cost);
  app.add_option("--warn-cost", warn_cost);
  app.add_flag("-h,--help", opts.help);
  app.add_flag("--version", version);
  app.add_flag("--list", list);
  std::string older_than;
  app.add_option("--older-than", older_than);
  bool expired = false;
  app.add_flag("--expired", expired);
  bool kept = false;
  app.add_flag("--kept", kept);
  std::string provider;
  app.add_option("--provider", provider);
  std::string pack_ref, pack_as;
  app.add_option("--ref", pack_ref);
  app.add_option("--as", pack_as);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::cerr << "ephrun: " << e.what() << "\n\n" << kUsage;
    return ephrun::kUsage;
  }
  bool bad_usd = false;
  opts.max_cost = parse_usd("--max-cost", max_cost, bad_usd);
  opts.warn_cost = parse_usd("--warn-cost", warn_cost, bad_usd);
  if (bad_usd) return ephrun::kUsage;
  if (version) {
    std::cout << "ephrun " << EPHRUN_VERSION << " (commit " << EPHRUN_COMMIT << ")\n";
    return 0;
  }
  if (list) {
    ephrun::Runtime rt(opts);
    return rt.list(std::cout);
  }
  if (recipe.empty()) {
    (opts.help ? std::cout : std::cerr) << kUsage;
    return opts.help ? 0 : ephrun::kUsage;
  }
  // Built-in commands are recipes shipped in stdlib/ephrun/cmd/; a Lua file
  // of the same name in the current directory still wins (see load_recipe).
  if ((recipe == "ls" || recipe == "reap" || recipe == "history" || recipe == "reaper" ||
       recipe == "new" || recipe == "check" || recipe == "meta" || recipe == "pack" ||
       recipe == "lock" || recipe == "status" || recipe == "attach" || recipe == "finish") &&
      !std::filesystem::is_regular_file(recipe))
    recipe = "ephrun:" + recipe;
  if (!older_than.empty()) {
    if (recipe != "ephrun:reap") {
      std::cerr << "ephrun: --older-than only applies to `ephrun reap`\n";
      return ephrun::kUsage;
    }
    args.push_back("older_than=" + older_than);
  }
  if (expired) {
    if (recipe != "ephrun:reap") {
      std::cerr << "ephrun: --expired only applies to `ephrun reap`\n";
      return ephrun::kUsage;
    }
    args.push_back("expired=true");
  }
  if (!provider.empty()) {
    if (recipe != "ephrun:new") {
      std::cerr << "ephrun: --provider only applies to `ephrun new recipe NAME`; a recipe takes "
                   "provider=NAME\n";
      return ephrun::kUsage;
    }
    args.push_back("provider=" + provider);
  }
  if (takes_words(recipe) && !opts.help) {
    std::string words;
    for (size_t i = 0; i < args.size(); ++i) words += (i ? "\x1f" : "") + args[i];
    args.assign({"words=" + words});
  }
  if (kept) {
    if (recipe != "ephrun:reap") {
      std::cerr << "ephrun: --kept only applies to `ephrun reap`\n";
      return ephrun::kUsage;
    }
    args.emplace_back("kept=true");
  }
  for (const auto& [flag, value] : {std::pair{"--ref", &pack_ref}, std::pair{"--as", &pack_as}}) {
    if (value->empty()) continue;
    if (recipe != "ephrun:pack") {
      std::cerr << "ephrun: " << flag
                << " only applies to `ephrun pack add` and `ephrun pack update`\n";
      return ephrun::kUsage;
    }
    args.push_back(std::string(flag + 2) + "=" + *value);
  }
  // `ephrun reaper install`, `ephrun pack add SRC`: the first bare word is the
  // action; for pack, the second is its operand.
  if ((recipe == "ephrun:reaper" || recipe == "ephrun:pack") && !args.empty() &&
      args[0].find('=') == std::string::npos)
    args[0] = "action=" + args[0];
  if (recipe == "ephrun:pack" && args.size() > 1 && args[0].starts_with("action=") &&
      args[1].find('=') == std::string::npos)
    args[1] = "target=" + args[1];
  // `ephrun lock break NAME`: the action, then the lock's name.
  if (recipe == "ephrun:lock") {
    if (!args.empty() && args[0].find('=') == std::string::npos) args[0] = "action=" + args[0];
    if (args.size() > 1 && args[1].find('=') == std::string::npos) args[1] = "name=" + args[1];
  }
  // A recipe's real run prints its outcome and measured figures under --json;
  // commands other than these have no JSON shape.
  if (opts.json && !opts.dry_run && !opts.help && recipe.starts_with("ephrun:") &&
      !json_without_dry_run_ok(recipe)) {
    std::cerr << "ephrun: --json has no meaning for `ephrun " << recipe.substr(7)
              << "`; it applies to recipes, --dry-run, ls, history, check, pack and lock\n";
    return ephrun::kUsage;
  }
  opts.verbosity = quiet ? -1 : verbose;
  try {
    ephrun::init_logging(opts.verbosity, opts.log_file);
    ephrun::Runtime rt(opts);
    int code = rt.run(recipe, args);
    std::fflush(stdout);
    return code;
  } catch (const std::exception& e) {
    std::cerr << "ephrun: " << e.what() << "\n";
    return ephrun::kFailed;
  }
}
