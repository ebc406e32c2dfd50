// At -O1 (the asan preset) GCC 12 reports a false -Wmaybe-uninitialized inside libstdc++'s
// <regex> (std::function moves in its NFA), which Catch's main pulls in.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
