/* sigbus.h — the opt-in SIGBUS guard of the command lines (asw_exit_on_sigbus, declared in asw.h).
 *
 * A file truncated (or rewritten in place) while it is mapped makes the next read of a vanished page raise SIGBUS,
 * which would kill the process with "Bus error" and a core dump. The handler uses only async-signal-safe calls.
 */
#ifndef ASW_SIGBUS_H
#define ASW_SIGBUS_H

#include "asw.h"

#endif /* ASW_SIGBUS_H */
