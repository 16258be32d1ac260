// Catch2's main lives alone in this file so test files recompile without it.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
