// process_setup.cpp — compress_tests runs recipes as the CLI does, so the process keeps freed activations in
// its heap as `compress` does (host_setup.h): without it a stories260K recipe spent a quarter of its time
// in page faults here and not in the CLI.
#include "compress/host_setup.h"

namespace {
const bool kHeapKept = (compress::keepFreedMemory(), true);
}  // namespace
