#include "experiment/slurm.hpp"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>

#include <fmt/format.h>

#include "base/paths.hpp"
#include "base/system.hpp"
#include "report/provenance.hpp"

namespace ablate {

namespace fs = std::filesystem;

namespace {

bool on_path(const std::string& program) {
  return std::system(("command -v " + program + " >/dev/null 2>&1").c_str()) == 0;
}

// The first line a command prints, and whether it succeeded.
std::pair<std::string, bool> run(const std::string& cmd) {
  std::string out;
  const bool ok = run_command(cmd, out);
  if (const auto nl = out.find('\n'); nl != std::string::npos) out.resize(nl);
  return {out, ok};
}

void write_new(const fs::path& p, const std::string& text) {
  if (fs::exists(p)) throw std::invalid_argument(fmt::format("'{}' exists already; not overwriting it (--run-id names another run)", p.string()));
  std::ofstream f(p, std::ios::binary);
  f << text;
  f.close();
  if (!f) throw std::runtime_error(fmt::format("cannot write '{}'", p.string()));
  fs::permissions(p, fs::perms::owner_exec | fs::perms::group_exec | fs::perms::others_exec, fs::perm_options::add);
}

}  // namespace

SlurmScripts write_slurm_job(const LoadedExperiment& exp, const SlurmOptions& o) {
  if (o.shards < 1) throw std::invalid_argument(fmt::format("--shards {}: allowed: >= 1", o.shards));
  if (exp.target_ci > 0)
    throw std::invalid_argument("target_ci decides rounds from every point's results, which needs them in one process; "
                                "give a fixed repeat for a sharded run");
  if (o.submit && !on_path("sbatch"))
    throw std::invalid_argument("--submit: sbatch is not on the PATH (run this on a Slurm login node, or submit the "
                                "written scripts there yourself)");
  const ExperimentConfig& first = exp.points.front().config;
  std::string run_id = o.run_id;
  if (run_id.empty()) {  // fixed now: every task writes into the same run folder
    std::string all;
    for (const auto& p : exp.points) all += p.resolved_yaml;
    const std::string stamp = iso8601_utc(std::chrono::system_clock::now());
    run_id = stamp.substr(0, 4) + stamp.substr(5, 2) + stamp.substr(8, 2) + "-" + stamp.substr(11, 2) + stamp.substr(14, 2) +
             stamp.substr(17, 2) + "-" + config_hash(all).substr(0, 8);
  }
  SlurmScripts out;
  const fs::path root = fs::absolute(o.results_root);
  out.run_dir = root / first.experiment / run_id;
  const fs::path sdir = out.run_dir / "slurm";
  fs::create_directories(sdir);
  out.array_script = sdir / "array.sbatch";
  out.merge_script = sdir / "merge.sbatch";

  std::string sets;
  for (const auto& s : o.overrides) sets += " --set " + shell_quote(s);
  std::string head = "#!/usr/bin/env bash\n";
  const auto opt = [&](const std::string& line) { head += "#SBATCH " + line + "\n"; };
  opt("--job-name=ablate-" + first.experiment);
  opt(fmt::format("--array=0-{}", o.shards - 1));
  opt("--requeue");
  opt("--signal=TERM@120");
  opt("--open-mode=append");
  opt("--output=" + (sdir / "shard-%a.out").string());
  if (!o.partition.empty()) opt("--partition=" + o.partition);
  if (!o.time.empty()) opt("--time=" + o.time);
  if (!o.account.empty()) opt("--account=" + o.account);
  if (o.gpus_per_task > 0) opt(fmt::format("--gpus-per-task={}", o.gpus_per_task));
  if (o.cpus_per_task > 0) opt(fmt::format("--cpus-per-task={}", o.cpus_per_task));
  for (const auto& e : o.extra) head += (e.rfind("#SBATCH", 0) == 0 ? e : "#SBATCH " + e) + "\n";

  const std::string array = head + fmt::format(R"(
# One shard of `{config}` per array task: `ablate run --shard I/{n}` runs units I, I+{n}, I+2*{n}, ...
# of the interleaved unit order into {run}/shards/I/, and resumes that folder by itself when the
# task runs again. Slurm sends SIGTERM 120 s before the time limit (--signal) and on preemption;
# ablate then stops cleanly (exit 143, the unit in flight discarded) and the task requeues itself.
# Written by `ablate slurm`; edit freely.
set -u
cd {root_dir}
srun {ablate} run {config}{sets} --out {out} --run-id {id} --shard "${{SLURM_ARRAY_TASK_ID}}/{n}" --quiet
rc=$?
if [ "$rc" -eq 143 ] || [ "$rc" -eq 130 ]; then
  echo "shard ${{SLURM_ARRAY_TASK_ID}} stopped (exit $rc); requeueing to resume"
  scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
fi
exit "$rc"
)",
                                               fmt::arg("config", shell_quote(fs::absolute(o.config).string())), fmt::arg("n", o.shards),
                                               fmt::arg("run", out.run_dir.string()), fmt::arg("root_dir", shell_quote(project_root().string())),
                                               fmt::arg("ablate", shell_quote(o.ablate.string())), fmt::arg("sets", sets),
                                               fmt::arg("out", shell_quote(root.string())), fmt::arg("id", shell_quote(run_id)));
  std::string merge = "#!/usr/bin/env bash\n";
  merge += "#SBATCH --job-name=ablate-" + first.experiment + "-merge\n";
  merge += "#SBATCH --output=" + (sdir / "merge.out").string() + "\n";
  if (!o.partition.empty()) merge += "#SBATCH --partition=" + o.partition + "\n";
  if (!o.account.empty()) merge += "#SBATCH --account=" + o.account + "\n";
  merge += fmt::format(R"(
# The shards' rows as one run's CSVs in {run}; submitted with --dependency=afterany:<array job>, so it
# runs however the tasks ended: `ablate merge` itself refuses, naming them, while any shard is unfinished.
set -eu
{ablate} merge {run_q}
)",
                       fmt::arg("run", out.run_dir.string()), fmt::arg("ablate", shell_quote(o.ablate.string())),
                       fmt::arg("run_q", shell_quote(out.run_dir.string())));
  write_new(out.array_script, array);
  write_new(out.merge_script, merge);

  if (o.submit) {
    const auto [a, ok] = run("sbatch --parsable " + shell_quote(out.array_script.string()));
    if (!ok || a.empty()) throw std::runtime_error("sbatch of " + out.array_script.string() + " failed");
    out.array_job = a.substr(0, a.find(';'));
    const auto [m, ok2] = run(fmt::format("sbatch --parsable --dependency=afterany:{} {}", out.array_job, shell_quote(out.merge_script.string())));
    if (!ok2 || m.empty()) throw std::runtime_error("sbatch of " + out.merge_script.string() + " failed");
    out.merge_job = m.substr(0, m.find(';'));
  }
  return out;
}

}  // namespace ablate
