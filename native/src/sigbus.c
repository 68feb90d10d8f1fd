/* sigbus.c — exit with one line when a guarded mapping raises SIGBUS (see sigbus.h). */
#if !defined(_WIN32)
#define _POSIX_C_SOURCE 200809L /* sigaction, siginfo_t */
#include <signal.h>
#include <unistd.h>
#endif
#include <string.h>

#include "sigbus.h"

#if !defined(_WIN32)
enum { MESSAGE_MAX = 1024 };

static char guard_message[MESSAGE_MAX];
static volatile size_t guard_message_len;
static volatile uintptr_t guard_begin, guard_end; /* [begin, end); empty while being changed */
static volatile int guard_exit_code;

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    (void)context;
    uintptr_t addr = (uintptr_t)info->si_addr;
    if (addr >= guard_begin && addr < guard_end) {
        if (write(STDERR_FILENO, guard_message, guard_message_len) < 0) {
            /* nothing more can be done about stderr */
        }
        _exit(guard_exit_code);
    }
    struct sigaction fallback; /* not in the file: the default action when the faulting access is retried */
    memset(&fallback, 0, sizeof fallback);
    fallback.sa_handler = SIG_DFL;
    sigemptyset(&fallback.sa_mask);
    sigaction(sig, &fallback, NULL);
}

int32_t asw_exit_on_sigbus(const void *begin, uint64_t nbytes, const char *message, int32_t exit_code) {
    size_t len = strlen(message);
    if (len >= MESSAGE_MAX || nbytes > UINTPTR_MAX - (uintptr_t)begin) return -1;
    guard_end = 0; /* no range while the message changes */
    guard_begin = 0;
    memcpy(guard_message, message, len);
    guard_message_len = len;
    guard_exit_code = exit_code;
    guard_begin = (uintptr_t)begin;
    guard_end = (uintptr_t)begin + (uintptr_t)nbytes;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    return sigaction(SIGBUS, &action, NULL) == 0 ? 0 : -1;
}
#else
int32_t asw_exit_on_sigbus(const void *begin, uint64_t nbytes, const char *message, int32_t exit_code) {
    (void)begin, (void)nbytes, (void)message, (void)exit_code;
    return -1;
}
#endif
