/* sigbus.h — an opt-in guard that turns a bus error inside a mapped .asw file into one line and an exit.
 *
 * A file truncated (or rewritten in place) while it is mapped makes the next read of a vanished page raise SIGBUS,
 * which would kill the process with "Bus error" and a core dump. The command lines call this once a file is mapped:
 * a SIGBUS whose fault address lies in [begin, begin + nbytes) writes `message` to stderr and _exit(exit_code)s
 * (both async-signal-safe); any other SIGBUS keeps the default action. One guarded range per process; a later call
 * replaces it. Returns 0, or -1 (message longer than 1023 bytes, sigaction failed, or no POSIX signals here).
 *
 * Exported for runtime/busguard.py (ctypes); not part of asw.h's model/session ABI.
 */
#ifndef ASW_SIGBUS_H
#define ASW_SIGBUS_H

#include <stdint.h>

#include "asw.h"

ASW_API int32_t asw_exit_on_sigbus(const void *begin, uint64_t nbytes, const char *message, int32_t exit_code);

#endif /* ASW_SIGBUS_H */
