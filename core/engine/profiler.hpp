#pragma once
// The capture window of `profile: {start_step, end_step}`: cudaProfilerStart/Stop around those
// engine steps, so that `nsys profile --capture-range=cudaProfilerApi` records steady state only.
// In a build without CUDA both calls do nothing.
namespace ablate {

class ProfileWindow {
 public:
  ProfileWindow(int start_step, int end_step) : start_(start_step), end_(end_step) {}
  ~ProfileWindow() { stop(); }
  // Call at the start of every step.
  void at_step(int step) {
    if (end_ <= 0) return;
    if (step == start_) start();
    if (step == end_) stop();
  }
  void stop();

 private:
  void start();
  int start_, end_;
  bool active_ = false;
};

}  // namespace ablate
