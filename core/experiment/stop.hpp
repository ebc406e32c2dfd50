#pragma once
// A clean stop on SIGINT / SIGTERM (Ctrl-C; what Slurm sends at a time limit or preemption): the
// first signal asks the run to stop (the unit in flight is discarded at its next engine step,
// what is complete stays, the folder says `status: interrupted`); a second one exits at once.
#include <stdexcept>
#include <string>

namespace ablate {

// Thrown out of a run when a stop was asked for; exit status 128 + signal.
struct RunInterrupted : std::runtime_error {
  int signal;
  RunInterrupted(int sig, const std::string& what) : std::runtime_error(what), signal(sig) {}
};

void install_stop_handlers();
int stop_signal();            // 0 while no stop was asked for
void throw_if_stopped();      // RunInterrupted when one was
std::string signal_name(int sig);

}  // namespace ablate
