#include "experiment/stop.hpp"

#include <csignal>
#include <unistd.h>

#include <atomic>

namespace ablate {

namespace {

std::atomic<int> g_signal{0};

extern "C" void on_stop_signal(int sig) {
  int none = 0;
  if (!g_signal.compare_exchange_strong(none, sig)) _exit(128 + sig);  // the second: at once
  static const char msg[] = "\nablate: stopping: the unit in flight is discarded, the finished ones kept (again to exit at once)\n";
  (void)!::write(STDERR_FILENO, msg, sizeof msg - 1);
}

}  // namespace

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

int stop_signal() { return g_signal.load(); }

std::string signal_name(int sig) { return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "signal " + std::to_string(sig); }

void throw_if_stopped() {
  if (const int sig = g_signal.load()) throw RunInterrupted(sig, signal_name(sig));
}

}  // namespace ablate
