/* The monitor's one compile unit: every program shares the maps of include/bw_maps.h (one ring
 * buffer, one set of counters, the visibility and process maps). */
#include "presets/presets.c"
#include "process/exec.c"
#include "process/lifecycle.c"
#include "file/file.c"
#include "net/net.c"
#include "caps/caps.c"
#include "syscalls/syscalls.c"
