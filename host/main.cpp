// ephrun: runs recipes that rent a machine for one job and give it back.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "runtime/embedded.hpp"
#include "runtime/log.hpp"
#include "runtime/runtime.hpp"

namespace {

constexpr const char* kUsage = R"(Usage: ephrun RECIPE [name=value ...] [options]

RECIPE is a path to a recipe file or the name of a built-in recipe.
`ephrun RECIPE --help` shows the recipe's parameters.

Commands (a Lua file of that name in the current directory runs instead):
  ephrun ls [--json]                          live resources, age, TTL left, cost so far
  ephrun reap [--dry-run] [--older-than 2h] [--expired] [--yes]
                                              destroy expired and orphaned resources
                                              (--expired: only those past their TTL)
  ephrun reaper install|status|remove         a systemd timer or crontab line that
                                              runs `ephrun reap --expired --yes`
  ephrun history [--json]                     past runs
  ephrun lock ls [--json] | lock break NAME   team locks (ephrun.lock); break asks first

Options:
  --dry-run        print the plan (resources, commands, cost) and change nothing
  --json           with --dry-run, print the plan as JSON; with ls and history, JSON
  -y, --yes        do not ask for confirmation
  -v, --verbose    more output (-vv for trace); tracebacks on errors
  -q, --quiet      only warnings and errors
  --log-file FILE  also write a debug log to FILE
  --notify URL     POST start/success/failure to a Slack-compatible webhook
                   (a secret; EPHRUN_NOTIFY_URL also sets it)
  --list           list the built-in recipes and commands with their summaries
  --version        print the version
  -h, --help       this help, or the recipe's with RECIPE

Exit codes: 0 success, 1 recipe failed, 2 usage or parameter error,
            130 interrupted (SIGINT), 143 terminated (SIGTERM), 129 hangup (SIGHUP).
)";

// Commands whose output --json shapes; elsewhere it needs --dry-run.
bool json_without_dry_run_ok(const std::string& recipe) {
  return recipe == "ephrun:ls" || recipe == "ephrun:history" || recipe == "ephrun:lock";
}

}  // namespace

int main(int argc, char** argv) {
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
  app.add_flag("-h,--help", opts.help);
  app.add_flag("--version", version);
  app.add_flag("--list", list);
  std::string older_than;
  app.add_option("--older-than", older_than);
  bool expired = false;
  app.add_flag("--expired", expired);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::cerr << "ephrun: " << e.what() << "\n\n" << kUsage;
    return ephrun::kUsage;
  }
  if (version) {
    std::cout << "ephrun " << EPHRUN_VERSION << "\n";
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
       recipe == "lock") &&
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
  // `ephrun reaper install`: the first bare word is the action.
  if (recipe == "ephrun:reaper" && !args.empty() && args[0].find('=') == std::string::npos)
    args[0] = "action=" + args[0];
  // `ephrun lock break NAME`: the action, then the lock's name.
  if (recipe == "ephrun:lock") {
    if (!args.empty() && args[0].find('=') == std::string::npos) args[0] = "action=" + args[0];
    if (args.size() > 1 && args[1].find('=') == std::string::npos) args[1] = "name=" + args[1];
  }
  if (opts.json && !opts.dry_run && !opts.help && !json_without_dry_run_ok(recipe)) {
    std::cerr << "ephrun: --json prints the plan of a --dry-run (or the output of `ephrun ls` "
                 "and `ephrun history`); add --dry-run\n";
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
