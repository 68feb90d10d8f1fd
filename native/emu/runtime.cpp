/* libascendcl.so of the emulator: the AscendCL runtime (device memory, contexts, streams, events, graph capture and
 * replay, task groups and updates, errors) plus the counters written to $ASW_EMU_STATS at exit.
 *
 * Device memory is a memfd mapped twice: PROT_NONE at the address handed to the caller (a host dereference of a
 * device pointer crashes) and read-write at a private alias that only the emulator's tasks use.
 * Streams are queues drained in order when the host waits (aclrtSynchronizeStream/Event/Device, an event wait of
 * another stream, or a copy from pageable host memory): until then nothing of the enqueued work has happened, so
 * a host read of pinned memory before the sync sees the old bytes, as it may on the device. */
#include "emu_internal.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>

namespace emu {

/* ------------------------------------------------------------------ errors */
static thread_local std::string t_pending_error;
static thread_local std::string t_returned_error;

static void vset_error(const char *fmt, va_list ap) {
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    t_pending_error = buf;
    if (getenv("ASW_EMU_VERBOSE")) fprintf(stderr, "[cann-emu] %s\n", buf);
}
void set_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vset_error(fmt, ap);
    va_end(ap);
}
int fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vset_error(fmt, ap);
    va_end(ap);
    return code;
}

/* ------------------------------------------------------------------ counters */
struct CopyCount {
    uint64_t count = 0, bytes = 0;
};
struct OpCount {
    uint64_t eager = 0, captured = 0, replayed = 0;
};
struct Counters {
    uint64_t device_allocs = 0, device_frees = 0, device_alloc_bytes = 0, host_allocs = 0, host_frees = 0;
    CopyCount copies[4];          /* by kind: h2h, h2d, d2h, d2d (host API calls, eager or captured) */
    CopyCount replayed_copies[4]; /* copies executed by graph replays */
    CopyCount memsets;
    uint64_t stream_syncs = 0, event_syncs = 0, device_syncs = 0;
    uint64_t launches = 0, captured_launches = 0, replayed_launches = 0;
    uint64_t graph_captures = 0, graph_replays = 0, task_updates = 0;
    std::map<std::string, OpCount> ops;
};
/* Never destroyed: the counters are written by a destructor function at exit, after static objects may be gone. */
struct Stats {
    std::mutex mu;
    Counters total, at_last_sync, at_last_step;
    std::vector<std::string> sync_deltas, step_deltas;
};
static Stats &stats() {
    static Stats *s = new Stats();
    return *s;
}
static const char *const kCopyNames[4] = {"host_to_host", "host_to_device", "device_to_host", "device_to_device"};

static std::string counters_json(const Counters &c, const Counters *base) {
    auto d = [&](uint64_t Counters::*f) { return (unsigned long long)(c.*f - (base ? base->*f : 0)); };
    std::string s = "{";
    char buf[256];
    auto field = [&](const char *name, unsigned long long v) {
        snprintf(buf, sizeof buf, "\"%s\": %llu, ", name, v);
        s += buf;
    };
    field("device_allocs", d(&Counters::device_allocs));
    field("device_frees", d(&Counters::device_frees));
    field("device_alloc_bytes", d(&Counters::device_alloc_bytes));
    field("host_allocs", d(&Counters::host_allocs));
    field("host_frees", d(&Counters::host_frees));
    for (int table = 0; table < 2; table++) {
        const CopyCount *cc = table ? c.replayed_copies : c.copies;
        const CopyCount *bc = base ? (table ? base->replayed_copies : base->copies) : nullptr;
        s += table ? "\"replayed_copies\": {" : "\"copies\": {";
        for (int k = 0; k < 4; k++) {
            snprintf(buf, sizeof buf, "%s\"%s\": {\"count\": %llu, \"bytes\": %llu}", k ? ", " : "", kCopyNames[k],
                     (unsigned long long)(cc[k].count - (bc ? bc[k].count : 0)),
                     (unsigned long long)(cc[k].bytes - (bc ? bc[k].bytes : 0)));
            s += buf;
        }
        s += "}, ";
    }
    snprintf(buf, sizeof buf, "\"memsets\": {\"count\": %llu, \"bytes\": %llu}, ",
             (unsigned long long)(c.memsets.count - (base ? base->memsets.count : 0)),
             (unsigned long long)(c.memsets.bytes - (base ? base->memsets.bytes : 0)));
    s += buf;
    field("stream_syncs", d(&Counters::stream_syncs));
    field("event_syncs", d(&Counters::event_syncs));
    field("device_syncs", d(&Counters::device_syncs));
    field("launches", d(&Counters::launches));
    field("captured_launches", d(&Counters::captured_launches));
    field("replayed_launches", d(&Counters::replayed_launches));
    field("graph_captures", d(&Counters::graph_captures));
    field("graph_replays", d(&Counters::graph_replays));
    field("task_updates", d(&Counters::task_updates));
    s += "\"ops\": {";
    bool first = true;
    for (auto &kv : c.ops) {
        OpCount b;
        if (base) {
            auto it = base->ops.find(kv.first);
            if (it != base->ops.end()) b = it->second;
        }
        OpCount o{kv.second.eager - b.eager, kv.second.captured - b.captured, kv.second.replayed - b.replayed};
        if (!o.eager && !o.captured && !o.replayed) continue;
        snprintf(buf, sizeof buf, "%s\"%s\": {\"eager\": %llu, \"captured\": %llu, \"replayed\": %llu}",
                 first ? "" : ", ", kv.first.c_str(), (unsigned long long)o.eager, (unsigned long long)o.captured,
                 (unsigned long long)o.replayed);
        s += buf;
        first = false;
    }
    s += "}}";
    return s;
}

static constexpr size_t kMaxDeltas = 200000;
/* Close one sync interval: the counters since the previous host synchronisation. */
static void note_sync(uint64_t Counters::*which) {
    std::lock_guard<std::mutex> lk(stats().mu);
    stats().total.*which += 1;
    if (stats().sync_deltas.size() < kMaxDeltas)
        stats().sync_deltas.push_back(counters_json(stats().total, &stats().at_last_sync));
    stats().at_last_sync = stats().total;
}

template <typename F> static void count(F f) {
    std::lock_guard<std::mutex> lk(stats().mu);
    f(stats().total);
}

static void write_stats() {
    const char *path = getenv("ASW_EMU_STATS");
    if (!path || !*path) return;
    std::string s;
    {
        std::lock_guard<std::mutex> lk(stats().mu);
        s = "{\"total\": " + counters_json(stats().total, nullptr) + ",\n\"syncs\": [";
        for (size_t i = 0; i < stats().sync_deltas.size(); i++) s += (i ? ",\n" : "\n") + stats().sync_deltas[i];
        s += "],\n\"steps\": [";
        for (size_t i = 0; i < stats().step_deltas.size(); i++) s += (i ? ",\n" : "\n") + stats().step_deltas[i];
        s += "]}\n";
    }
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "[cann-emu] cannot write counters to %s: %s\n", path, strerror(errno));
        return;
    }
    fwrite(s.data(), 1, s.size(), f);
    fclose(f);
}
__attribute__((destructor)) static void write_stats_at_exit() {
    write_stats();
}

/* ------------------------------------------------------------------ device memory */
struct Alloc {
    size_t size;   /* bytes the caller asked for: the only bytes a task may touch */
    size_t mapped; /* page-rounded mapping length */
    char *alias;
};
static std::mutex g_mem_mu;
static std::map<uintptr_t, Alloc> g_allocs;     /* by device address */
static std::map<uintptr_t, size_t> g_freed;     /* freed device ranges (address space kept reserved) */
static std::map<uintptr_t, size_t> g_host_pins; /* aclrtMallocHost blocks */

static bool find_alloc(uintptr_t p, uintptr_t *base, Alloc *a) {
    auto it = g_allocs.upper_bound(p);
    if (it == g_allocs.begin()) return false;
    --it;
    if (p >= it->first + it->second.size) return false;
    *base = it->first;
    *a = it->second;
    return true;
}
static bool in_freed(uintptr_t p) {
    auto it = g_freed.upper_bound(p);
    if (it == g_freed.begin()) return false;
    --it;
    return p < it->first + it->second;
}

char *dev_alias(const void *dev, size_t nbytes, std::string &err) {
    std::lock_guard<std::mutex> lk(g_mem_mu);
    uintptr_t p = (uintptr_t)dev, base;
    Alloc a;
    char buf[256];
    if (!find_alloc(p, &base, &a)) {
        snprintf(buf, sizeof buf, "address %p is not device memory%s", dev,
                 in_freed(p) ? " (it was freed with aclrtFree)" : " (a host pointer or never allocated)");
        err = buf;
        return nullptr;
    }
    if (nbytes > a.size - (p - base)) {
        snprintf(buf, sizeof buf, "%zu bytes at device address %p run past the end of its %zu-byte allocation %p",
                 nbytes, dev, a.size, (void *)base);
        err = buf;
        return nullptr;
    }
    return a.alias + (p - base);
}

size_t dev_bytes_after(const void *dev) {
    std::lock_guard<std::mutex> lk(g_mem_mu);
    uintptr_t base;
    Alloc a;
    if (!find_alloc((uintptr_t)dev, &base, &a)) return 0;
    return a.size - ((uintptr_t)dev - base);
}

enum class Where { Host, Pinned, Device, BadDevice };
static Where classify(const void *p, size_t n) {
    std::lock_guard<std::mutex> lk(g_mem_mu);
    uintptr_t base;
    Alloc a;
    if (find_alloc((uintptr_t)p, &base, &a))
        return n <= a.size - ((uintptr_t)p - base) ? Where::Device : Where::BadDevice;
    if (in_freed((uintptr_t)p)) return Where::BadDevice;
    auto it = g_host_pins.upper_bound((uintptr_t)p);
    if (it != g_host_pins.begin()) {
        --it;
        if ((uintptr_t)p + n <= it->first + it->second && (uintptr_t)p >= it->first) return Where::Pinned;
    }
    return Where::Host;
}

/* ------------------------------------------------------------------ contexts, streams, events, graphs */
struct Graph;
struct Stream;
struct Context {
    int device = 0;
    bool is_default = false;
    bool alive = true;
    Stream *default_stream = nullptr;
};

struct Task {
    uint64_t seq;
    TaskKind kind;
    std::string name;
    TaskFn fn;
};

struct TaskGroup;
struct Capture {
    Graph *graph;
    aclmdlRICaptureMode mode;
    std::thread::id thread;
    bool invalidated = false;
    std::string why;
    long group_begin = -1; /* index of the first task of an open task group */
};

struct Stream {
    Context *ctx;
    bool is_default;
    bool alive = true;
    std::mutex mu; /* guards q, next_seq */
    std::deque<Task> q;
    uint64_t next_seq = 1, done_seq = 0;
    int sticky = 0; /* first execution error, reported (and cleared) by the next sync of this stream */
    std::string sticky_msg;
    std::unique_ptr<Capture> cap;
    TaskGroup *updating = nullptr; /* inside aclmdlRICaptureTaskUpdateBegin/End */
    std::vector<Task> update_tasks;
};

struct GTask {
    TaskKind kind;
    std::string name;
    TaskFn fn;
};
struct Graph {
    Context *ctx;
    bool alive = true;
    std::vector<GTask> tasks;
};
struct TaskGroup {
    Graph *graph;
    size_t begin, end;
};

struct Event {
    uint32_t flags = 0;
    bool alive = true;
    Stream *last_stream = nullptr; /* the most recent aclrtRecordEvent */
    uint64_t last_seq = 0;
};

/* Everything that owns handles; handles are never reused (destroyed objects stay as tombstones) so a stale handle
 * is reported as such instead of aliasing a new object. */
static std::recursive_mutex g_obj_mu;
static std::set<Context *> g_contexts;
static std::set<Stream *> g_streams;
static std::set<Event *> g_events;
static std::set<Graph *> g_graphs;
static std::set<TaskGroup *> g_groups;
static std::map<int, Context *> g_default_ctx;
static std::map<int, int> g_device_refs;
static bool g_initialized = false;
static std::atomic<int> g_global_captures{0};

static thread_local Context *t_ctx = nullptr;
static thread_local int t_local_captures = 0;

/* One "device": only one thread executes tasks at a time, in each stream's order. */
static std::recursive_mutex g_exec_mu;
static thread_local bool t_replaying = false;

static int device_count() {
    const char *e = getenv("ASW_EMU_DEVICES");
    if (e && *e) {
        int n = atoi(e);
        if (n >= 0 && n <= 64) return n;
    }
    return 1;
}

int require_context() {
    if (!g_initialized) return fail(E_UNINITIALIZE, "aclInit has not been called");
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    if (!t_ctx)
        return fail(
            E_RT_CONTEXT_NULL,
            "no current context on this thread: call aclrtSetDevice or aclrtSetCurrentContext on this thread first");
    if (!t_ctx->alive) return fail(E_RT_CONTEXT_NULL, "the current context of this thread was destroyed");
    return ACL_SUCCESS;
}

/* The live stream behind a handle (nullptr = the default stream of the current context), in the current context. */
static int resolve_stream(aclrtStream s, Stream **out) {
    int rc = require_context();
    if (rc) return rc;
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    Stream *st = s ? (Stream *)s : t_ctx->default_stream;
    if (!g_streams.count(st))
        return fail(E_RT_INVALID_HANDLE, "stream %p is not a stream created by aclrtCreateStream", s);
    if (!st->alive) return fail(E_RT_INVALID_HANDLE, "stream %p was destroyed", s);
    if (st->ctx != t_ctx)
        return fail(E_RT_STREAM_CONTEXT,
                    "stream %p belongs to another context than this thread's current one (call aclrtSetCurrentContext)",
                    s);
    *out = st;
    return ACL_SUCCESS;
}

/* An operation that the capture modes call unsafe (sync copy/memset/sync; pageable async copies are checked where
 * they are issued): GLOBAL forbids it in every thread, THREAD_LOCAL in the capturing thread (CANN runtime docs). */
static int unsafe_during_capture(const char *what) {
    if (g_global_captures.load() > 0 || t_local_captures > 0) {
        std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
        for (Stream *st : g_streams)
            if (st->cap && (st->cap->mode == ACL_MODEL_RI_CAPTURE_MODE_GLOBAL ||
                            (st->cap->mode == ACL_MODEL_RI_CAPTURE_MODE_THREAD_LOCAL &&
                             st->cap->thread == std::this_thread::get_id()))) {
                st->cap->invalidated = true;
                st->cap->why = std::string(what) + " was called during the capture";
            }
        return fail(E_RT_CAPTURE_MODE_NOT_SUPPORT,
                    "%s is not allowed while a stream is being captured (capture invalidated)", what);
    }
    return ACL_SUCCESS;
}

/* Run the queued tasks of `st` up to and including sequence number `upto`. Caller holds no stream lock. */
static void drain(Stream *st, uint64_t upto) {
    std::lock_guard<std::recursive_mutex> ex(g_exec_mu);
    for (;;) {
        Task t;
        {
            std::lock_guard<std::mutex> lk(st->mu);
            if (st->q.empty() || st->q.front().seq > upto) return;
            t = std::move(st->q.front());
            st->q.pop_front();
        }
        std::string err;
        int rc = t.fn(err);
        if (rc && !st->sticky) {
            st->sticky = rc;
            st->sticky_msg = t.name + ": " + err;
        }
        st->done_seq = t.seq;
    }
}
static void drain_all(Stream *st) {
    drain(st, UINT64_MAX);
}

/* Report (and clear) a stream's execution error as the return of a sync. */
static int take_sticky(Stream *st) {
    if (!st->sticky) return ACL_SUCCESS;
    int rc = st->sticky;
    std::string m = st->sticky_msg;
    st->sticky = 0;
    st->sticky_msg.clear();
    return fail(rc, "a task on stream %p failed on the device: %s", (void *)st, m.c_str());
}

static bool allowed_in_group(TaskKind k) {
    return k == TaskKind::Op;
}

int enqueue(aclrtStream s, TaskKind kind, const std::string &name, TaskFn fn) {
    Stream *st;
    int rc = resolve_stream(s, &st);
    if (rc) return rc;
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    if (st->cap) {
        Capture &c = *st->cap;
        if (c.group_begin >= 0 && !allowed_in_group(kind)) {
            c.invalidated = true;
            c.why = name + " inside a task group";
            return fail(E_RT_TASK_TYPE_NOT_SUPPORT,
                        "only operator (aclnn) tasks may be issued inside a task group, not %s", name.c_str());
        }
        c.graph->tasks.push_back(GTask{kind, name, std::move(fn)});
        if (kind == TaskKind::Op)
            count([&](Counters &t) {
                t.captured_launches++;
                t.ops[name].captured++;
            });
        return ACL_SUCCESS;
    }
    if (st->updating) {
        if (kind != TaskKind::Op)
            return fail(E_RT_TASK_TYPE_NOT_SUPPORT,
                        "only operator tasks may be re-issued between aclmdlRICaptureTaskUpdateBegin/End, not %s",
                        name.c_str());
        st->update_tasks.push_back(Task{0, kind, name, std::move(fn)});
        return ACL_SUCCESS;
    }
    if (kind == TaskKind::Op)
        count([&](Counters &t) {
            t.launches++;
            t.ops[name].eager++;
        });
    std::lock_guard<std::mutex> ql(st->mu);
    st->q.push_back(Task{st->next_seq++, kind, name, std::move(fn)});
    return ACL_SUCCESS;
}

/* The sequence number of the last task enqueued on `st` (0 if none). */
static uint64_t last_seq(Stream *st) {
    std::lock_guard<std::mutex> lk(st->mu);
    return st->next_seq - 1;
}

static int check_stream_for_sync(Stream *st, const char *what) {
    if (st->cap) {
        st->cap->invalidated = true;
        st->cap->why = std::string(what) + " on the capturing stream";
        return fail(E_RT_CAPTURE_MODE_NOT_SUPPORT, "%s on a stream that is being captured (capture invalidated)", what);
    }
    return ACL_SUCCESS;
}

} // namespace emu

using namespace emu;

/* ================================================================== exported runtime API */

EMU_EXPORT const char *aclGetRecentErrMsg() {
    if (t_pending_error.empty()) return nullptr;
    t_returned_error = t_pending_error;
    t_pending_error.clear();
    return t_returned_error.c_str();
}

EMU_EXPORT aclError aclInit(const char *configPath) {
    (void)configPath;
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    if (g_initialized) return fail(E_REPEAT_INITIALIZE, "aclInit was already called");
    g_initialized = true;
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclFinalize() {
    std::vector<Stream *> streams;
    {
        std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
        if (!g_initialized) return fail(E_REPEAT_FINALIZE, "aclFinalize without aclInit");
        g_initialized = false;
        for (Stream *st : g_streams)
            if (st->alive) streams.push_back(st);
    }
    for (Stream *st : streams) drain_all(st);
    return ACL_SUCCESS;
}

EMU_EXPORT const char *aclrtGetSocName() {
    const char *name = getenv("ASW_EMU_SOC"); /* tests play another chip (e.g. a 310P) with it */
    return name != nullptr && name[0] != '\0' ? name : "Ascend910_9391";
}

EMU_EXPORT aclError aclrtGetDeviceCount(uint32_t *count) {
    if (!count) return fail(E_INVALID_PARAM, "aclrtGetDeviceCount: count is null");
    *count = (uint32_t)device_count();
    return ACL_SUCCESS;
}

static Context *new_context(int device, bool is_default) {
    Context *c = new Context();
    c->device = device;
    c->is_default = is_default;
    Stream *st = new Stream();
    st->ctx = c;
    st->is_default = true;
    c->default_stream = st;
    g_contexts.insert(c);
    g_streams.insert(st);
    return c;
}

/* Finish a context's queued work, then mark it and its streams dead (handles stay as tombstones). */
static void retire_context(Context *c) {
    std::vector<Stream *> streams;
    {
        std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
        for (Stream *st : g_streams)
            if (st->ctx == c && st->alive) streams.push_back(st);
    }
    for (Stream *st : streams) drain_all(st);
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    for (Stream *st : streams) st->alive = false;
    c->alive = false;
    if (t_ctx == c) t_ctx = nullptr;
}

EMU_EXPORT aclError aclrtSetDevice(int32_t deviceId) {
    if (!g_initialized) return fail(E_UNINITIALIZE, "aclrtSetDevice before aclInit");
    if (deviceId < 0 || deviceId >= device_count())
        return fail(E_INVALID_DEVICE, "device %d does not exist (%d device(s); ASW_EMU_DEVICES sets the count)",
                    deviceId, device_count());
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    Context *&c = g_default_ctx[deviceId];
    if (!c || !c->alive) c = new_context(deviceId, true);
    g_device_refs[deviceId]++;
    t_ctx = c;
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtResetDevice(int32_t deviceId) {
    Context *c;
    {
        std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
        if (g_device_refs[deviceId] <= 0)
            return fail(E_INVALID_DEVICE, "aclrtResetDevice(%d) without aclrtSetDevice", deviceId);
        if (--g_device_refs[deviceId] > 0) return ACL_SUCCESS;
        c = g_default_ctx[deviceId];
    }
    retire_context(c);
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtGetDevice(int32_t *deviceId) {
    int rc = require_context();
    if (rc) return rc;
    if (!deviceId) return fail(E_INVALID_PARAM, "aclrtGetDevice: deviceId is null");
    *deviceId = t_ctx->device;
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtCreateContext(aclrtContext *context, int32_t deviceId) {
    if (!g_initialized) return fail(E_UNINITIALIZE, "aclrtCreateContext before aclInit");
    if (!context) return fail(E_INVALID_PARAM, "aclrtCreateContext: context is null");
    if (deviceId < 0 || deviceId >= device_count()) return fail(E_INVALID_DEVICE, "device %d does not exist", deviceId);
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    Context *c = new_context(deviceId, false);
    t_ctx = c;
    *context = c;
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtDestroyContext(aclrtContext context) {
    Context *c = (Context *)context;
    {
        std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
        if (!g_contexts.count(c) || !c->alive)
            return fail(E_RT_INVALID_HANDLE, "context %p is not a live context", context);
        if (c->is_default)
            return fail(E_INVALID_PARAM,
                        "the default context is released by aclrtResetDevice, not aclrtDestroyContext");
    }
    retire_context(c);
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtSetCurrentContext(aclrtContext context) {
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    Context *c = (Context *)context;
    if (!g_contexts.count(c) || !c->alive)
        return fail(E_RT_INVALID_HANDLE, "context %p is not a live context", context);
    t_ctx = c;
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtGetCurrentContext(aclrtContext *context) {
    if (!context) return fail(E_INVALID_PARAM, "aclrtGetCurrentContext: context is null");
    int rc = require_context();
    if (rc) return rc;
    *context = t_ctx;
    return ACL_SUCCESS;
}

/* ---- memory */

EMU_EXPORT aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy) {
    (void)policy;
    int rc = require_context();
    if (rc) return rc;
    if (!devPtr) return fail(E_INVALID_PARAM, "aclrtMalloc: devPtr is null");
    if (size == 0) return fail(E_INVALID_PARAM, "aclrtMalloc: size is 0");
    /* A2/A3: rounded up to 32 bytes plus 32 (CANN runtime docs); tasks may only touch the requested bytes. */
    size_t rounded = (size + 31) / 32 * 32 + 32;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t mapped = (rounded + page - 1) / page * page;
    int fd = memfd_create("cann-emu-device", MFD_CLOEXEC);
    if (fd < 0) return fail(E_BAD_ALLOC, "aclrtMalloc(%zu): memfd_create failed: %s", size, strerror(errno));
    if (ftruncate(fd, (off_t)mapped) != 0) {
        close(fd);
        return fail(E_BAD_ALLOC, "aclrtMalloc(%zu): out of memory", size);
    }
    void *user = mmap(nullptr, mapped, PROT_NONE, MAP_SHARED, fd, 0);
    void *alias = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (user == MAP_FAILED || alias == MAP_FAILED) {
        if (user != MAP_FAILED) munmap(user, mapped);
        if (alias != MAP_FAILED) munmap(alias, mapped);
        return fail(E_BAD_ALLOC, "aclrtMalloc(%zu): mmap failed", size);
    }
    /* the runtime does not zero memory: fill it with 0xFF bytes (NaN in every float dtype, -1 in integers) so that a
     * read of bytes nothing wrote shows up */
    memset(alias, 0xFF, size);
    {
        std::lock_guard<std::mutex> lk(g_mem_mu);
        g_allocs[(uintptr_t)user] = Alloc{size, mapped, (char *)alias};
        g_freed.erase((uintptr_t)user);
    }
    count([&](Counters &t) {
        t.device_allocs++;
        t.device_alloc_bytes += size;
    });
    *devPtr = user;
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtFree(void *devPtr) {
    int rc = require_context();
    if (rc) return rc;
    std::lock_guard<std::mutex> lk(g_mem_mu);
    auto it = g_allocs.find((uintptr_t)devPtr);
    if (it == g_allocs.end())
        return fail(E_RT_MEMORY_FREE, "aclrtFree(%p): not the start of a live device allocation%s", devPtr,
                    in_freed((uintptr_t)devPtr) ? " (already freed)" : "");
    Alloc a = it->second;
    g_allocs.erase(it);
    munmap(a.alias, a.mapped);
    /* keep the address range reserved (and inaccessible) so a stale pointer never aliases a later allocation */
    mmap(devPtr, a.mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    g_freed[(uintptr_t)devPtr] = a.mapped;
    count([&](Counters &t) { t.device_frees++; });
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtMallocHost(void **hostPtr, size_t size) {
    int rc = require_context();
    if (rc) return rc;
    if (!hostPtr || size == 0) return fail(E_INVALID_PARAM, "aclrtMallocHost: null pointer or size 0");
    void *p = aligned_alloc(64, (size + 63) / 64 * 64);
    if (!p) return fail(E_BAD_ALLOC, "aclrtMallocHost(%zu): out of memory", size);
    memset(p, 0xFF, size); /* not zeroed either */
    {
        std::lock_guard<std::mutex> lk(g_mem_mu);
        g_host_pins[(uintptr_t)p] = size;
    }
    count([&](Counters &t) { t.host_allocs++; });
    *hostPtr = p;
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtFreeHost(void *hostPtr) {
    {
        std::lock_guard<std::mutex> lk(g_mem_mu);
        auto it = g_host_pins.find((uintptr_t)hostPtr);
        if (it == g_host_pins.end())
            return fail(E_INVALID_PARAM, "aclrtFreeHost(%p): not memory from aclrtMallocHost", hostPtr);
        g_host_pins.erase(it);
    }
    free(hostPtr);
    count([&](Counters &t) { t.host_frees++; });
    return ACL_SUCCESS;
}

static const char *where_name(Where w) {
    switch (w) {
    case Where::Host: return "pageable host memory";
    case Where::Pinned: return "pinned host memory";
    case Where::Device: return "device memory";
    default: return "an invalid device range";
    }
}

/* Check a copy's pointers against its kind; returns the resolved kind (0..3) or -1 with the error set. */
static int check_copy(void *dst, size_t destMax, const void *src, size_t count_, aclrtMemcpyKind kind, const char *api,
                      Where *wdst, Where *wsrc) {
    if (!dst || !src) return fail(E_INVALID_PARAM, "%s: null pointer", api), -1;
    if (count_ > destMax) return fail(E_INVALID_PARAM, "%s: count %zu exceeds destMax %zu", api, count_, destMax), -1;
    *wdst = classify(dst, count_);
    *wsrc = classify(src, count_);
    if (*wdst == Where::BadDevice || *wsrc == Where::BadDevice) {
        std::string err;
        dev_alias(*wdst == Where::BadDevice ? dst : src, count_, err);
        return fail(E_INVALID_PARAM, "%s: %s", api, err.c_str()), -1;
    }
    bool ddev = *wdst == Where::Device, sdev = *wsrc == Where::Device;
    int actual = ddev ? (sdev ? 3 : 1) : (sdev ? 2 : 0);
    int k = (int)kind;
    if (k == 4) return actual; /* ACL_MEMCPY_DEFAULT: inferred from the pointers */
    if (k < 0 || k > 3) return fail(E_INVALID_PARAM, "%s: memcpy kind %d is not emulated", api, k), -1;
    if (k != actual)
        return fail(E_INVALID_PARAM, "%s: kind %s but the destination is %s and the source is %s", api, kCopyNames[k],
                    where_name(*wdst), where_name(*wsrc)),
               -1;
    return actual;
}

/* Perform a checked copy now (as a task body): device sides through their aliases. */
static int do_copy(void *dst, const void *src, size_t n, int kind, std::string &err) {
    char *d = (char *)dst;
    const char *s = (const char *)src;
    if (kind == 1 || kind == 3) {
        if (!(d = dev_alias(dst, n, err))) return E_RT_AICORE_EXCEPTION;
    }
    if (kind == 2 || kind == 3) {
        if (!(s = dev_alias(src, n, err))) return E_RT_AICORE_EXCEPTION;
    }
    memmove(d, s, n);
    return 0;
}

EMU_EXPORT aclError aclrtMemcpy(void *dst, size_t destMax, const void *src, size_t count_, aclrtMemcpyKind kind) {
    int rc = require_context();
    if (rc) return rc;
    if ((rc = unsafe_during_capture("aclrtMemcpy"))) return rc;
    Where wd, ws;
    int k = check_copy(dst, destMax, src, count_, kind, "aclrtMemcpy", &wd, &ws);
    if (k < 0) return E_INVALID_PARAM;
    std::string err;
    if ((rc = do_copy(dst, src, count_, k, err))) return fail(rc, "aclrtMemcpy: %s", err.c_str());
    count([&](Counters &t) {
        t.copies[k].count++;
        t.copies[k].bytes += count_;
    });
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtMemcpyAsync(void *dst, size_t destMax, const void *src, size_t count_, aclrtMemcpyKind kind,
                                     aclrtStream stream) {
    Stream *st;
    int rc = resolve_stream(stream, &st);
    if (rc) return rc;
    Where wd, ws;
    int k = check_copy(dst, destMax, src, count_, kind, "aclrtMemcpyAsync", &wd, &ws);
    if (k < 0) return E_INVALID_PARAM;
    bool pageable = wd == Where::Host || ws == Where::Host;
    if (pageable && k != 0 && st->cap && st->cap->mode != ACL_MODEL_RI_CAPTURE_MODE_RELAXED) {
        st->cap->invalidated = true;
        st->cap->why = "aclrtMemcpyAsync with pageable host memory";
        return fail(
            E_RT_CAPTURE_MODE_NOT_SUPPORT,
            "aclrtMemcpyAsync: pageable host memory cannot be captured (use aclrtMallocHost); capture invalidated");
    }
    rc = enqueue(stream, TaskKind::Copy, std::string("memcpy ") + kCopyNames[k], [=](std::string &err) {
        int r = do_copy(dst, src, count_, k, err);
        if (!r && t_replaying)
            count([&](Counters &t) {
                t.replayed_copies[k].count++;
                t.replayed_copies[k].bytes += count_;
            });
        return r;
    });
    if (rc) return rc;
    count([&](Counters &t) {
        t.copies[k].count++;
        t.copies[k].bytes += count_;
    });
    /* pageable host memory: the call returns after the copy is done (CANN runtime docs) */
    if (pageable && k != 0 && !st->cap) {
        drain(st, last_seq(st));
        return take_sticky(st);
    }
    return ACL_SUCCESS;
}

static int do_memset(void *devPtr, int32_t value, size_t n, std::string &err) {
    char *d = dev_alias(devPtr, n, err);
    if (!d) return E_RT_AICORE_EXCEPTION;
    memset(d, value, n);
    return 0;
}

static int check_memset(void *devPtr, size_t maxCount, size_t n, const char *api) {
    if (n > maxCount) return fail(E_INVALID_PARAM, "%s: count %zu exceeds maxCount %zu", api, n, maxCount);
    Where w = classify(devPtr, n);
    if (w != Where::Device) {
        std::string err;
        if (w == Where::BadDevice) dev_alias(devPtr, n, err);
        return fail(E_INVALID_PARAM, "%s: %p is %s", api, devPtr, w == Where::BadDevice ? err.c_str() : where_name(w));
    }
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtMemset(void *devPtr, size_t maxCount, int32_t value, size_t count_) {
    int rc = require_context();
    if (rc) return rc;
    if ((rc = unsafe_during_capture("aclrtMemset"))) return rc;
    if ((rc = check_memset(devPtr, maxCount, count_, "aclrtMemset"))) return rc;
    std::string err;
    if ((rc = do_memset(devPtr, value, count_, err))) return fail(rc, "aclrtMemset: %s", err.c_str());
    count([&](Counters &t) {
        t.memsets.count++;
        t.memsets.bytes += count_;
    });
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtMemsetAsync(void *devPtr, size_t maxCount, int32_t value, size_t count_, aclrtStream stream) {
    int rc = require_context();
    if (rc) return rc;
    if ((rc = check_memset(devPtr, maxCount, count_, "aclrtMemsetAsync"))) return rc;
    rc = enqueue(stream, TaskKind::Memset, "memset",
                 [=](std::string &err) { return do_memset(devPtr, value, count_, err); });
    if (!rc)
        count([&](Counters &t) {
            t.memsets.count++;
            t.memsets.bytes += count_;
        });
    return rc;
}

/* ---- streams */

EMU_EXPORT aclError aclrtCreateStream(aclrtStream *stream) {
    int rc = require_context();
    if (rc) return rc;
    if (!stream) return fail(E_INVALID_PARAM, "aclrtCreateStream: stream is null");
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    Stream *st = new Stream();
    st->ctx = t_ctx;
    st->is_default = false;
    g_streams.insert(st);
    *stream = st;
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtCreateStreamWithConfig(aclrtStream *stream, uint32_t priority, uint32_t flag) {
    (void)priority;
    (void)flag;
    return aclrtCreateStream(stream);
}

EMU_EXPORT aclError aclrtDestroyStream(aclrtStream stream) {
    if (!stream) return fail(E_INVALID_PARAM, "aclrtDestroyStream: the default stream cannot be destroyed");
    Stream *st;
    int rc = resolve_stream(stream, &st);
    if (rc) return rc;
    if (st->cap) return fail(E_RT_CAPTURE_MODE_NOT_SUPPORT, "aclrtDestroyStream: the stream is being captured");
    drain_all(st);
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    st->alive = false;
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtSynchronizeStream(aclrtStream stream) {
    Stream *st;
    int rc = resolve_stream(stream, &st);
    if (rc) return rc;
    if ((rc = check_stream_for_sync(st, "aclrtSynchronizeStream"))) return rc;
    drain(st, last_seq(st));
    note_sync(&Counters::stream_syncs);
    return take_sticky(st);
}

EMU_EXPORT aclError aclrtSynchronizeDevice(void) {
    int rc = require_context();
    if (rc) return rc;
    if ((rc = unsafe_during_capture("aclrtSynchronizeDevice"))) return rc;
    std::vector<Stream *> mine;
    {
        std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
        for (Stream *st : g_streams)
            if (st->alive && st->ctx->device == t_ctx->device) mine.push_back(st);
    }
    for (Stream *st : mine) drain(st, last_seq(st));
    note_sync(&Counters::device_syncs);
    for (Stream *st : mine)
        if ((rc = take_sticky(st))) return rc;
    return ACL_SUCCESS;
}

/* ---- events */

static int live_event(aclrtEvent e, Event **out) {
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    Event *ev = (Event *)e;
    if (!g_events.count(ev)) return fail(E_RT_INVALID_HANDLE, "event %p was not created by aclrtCreateEvent*", e);
    if (!ev->alive) return fail(E_RT_INVALID_HANDLE, "event %p was destroyed", e);
    *out = ev;
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtCreateEventWithFlag(aclrtEvent *event, uint32_t flag) {
    int rc = require_context();
    if (rc) return rc;
    if (!event) return fail(E_INVALID_PARAM, "aclrtCreateEvent: event is null");
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    Event *ev = new Event();
    ev->flags = flag;
    g_events.insert(ev);
    *event = ev;
    return ACL_SUCCESS;
}
EMU_EXPORT aclError aclrtCreateEvent(aclrtEvent *event) {
    return aclrtCreateEventWithFlag(event, ACL_EVENT_SYNC);
}
EMU_EXPORT aclError aclrtCreateEventExWithFlag(aclrtEvent *event, uint32_t flag) {
    return aclrtCreateEventWithFlag(event, flag);
}

EMU_EXPORT aclError aclrtDestroyEvent(aclrtEvent event) {
    Event *ev;
    int rc = live_event(event, &ev);
    if (rc) return rc;
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    ev->alive = false;
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtRecordEvent(aclrtEvent event, aclrtStream stream) {
    Event *ev;
    Stream *st;
    int rc = live_event(event, &ev);
    if (rc || (rc = resolve_stream(stream, &st))) return rc;
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    if (st->cap) {
        /* a record inside a graph: on replay it marks the replaying stream's progress */
        st->cap->graph->tasks.push_back(GTask{TaskKind::EventRecord, "event record", [](std::string &) { return 0; }});
        return ACL_SUCCESS;
    }
    rc = enqueue(stream, TaskKind::EventRecord, "event record", [](std::string &) { return 0; });
    if (rc) return rc;
    ev->last_stream = st;
    ev->last_seq = last_seq(st);
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtSynchronizeEvent(aclrtEvent event) {
    Event *ev;
    int rc = live_event(event, &ev);
    if (rc || (rc = require_context())) return rc;
    Stream *st;
    uint64_t upto;
    {
        std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
        st = ev->last_stream;
        upto = ev->last_seq;
    }
    if (st) {
        if (st->cap) return check_stream_for_sync(st, "aclrtSynchronizeEvent");
        drain(st, upto);
    }
    note_sync(&Counters::event_syncs);
    return st ? take_sticky(st) : ACL_SUCCESS;
}

EMU_EXPORT aclError aclrtStreamWaitEvent(aclrtStream stream, aclrtEvent event) {
    Event *ev;
    Stream *st;
    int rc = live_event(event, &ev);
    if (rc || (rc = resolve_stream(stream, &st))) return rc;
    if (st->cap) {
        /* captured wait: at replay, wait for the event's latest record at that time (e.g. a task update) */
        return enqueue(stream, TaskKind::EventWait, "event wait", [ev](std::string &) {
            Stream *src;
            uint64_t upto;
            {
                std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
                src = ev->last_stream;
                upto = ev->last_seq;
            }
            if (src) drain(src, upto);
            return 0;
        });
    }
    Stream *src;
    uint64_t upto;
    {
        std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
        src = ev->last_stream;
        upto = ev->last_seq;
    }
    return enqueue(stream, TaskKind::EventWait, "event wait", [src, upto](std::string &) {
        if (src) drain(src, upto);
        return 0;
    });
}

EMU_EXPORT aclError aclrtResetEvent(aclrtEvent event, aclrtStream stream) {
    Event *ev;
    int rc = live_event(event, &ev);
    if (rc) return rc;
    return enqueue(stream, TaskKind::EventReset, "event reset", [](std::string &) { return 0; });
}

/* ---- graph capture and replay */

EMU_EXPORT aclError aclmdlRICaptureBegin(aclrtStream stream, aclmdlRICaptureMode mode) {
    Stream *st;
    int rc = resolve_stream(stream, &st);
    if (rc) return rc;
    if (st->is_default)
        return fail(E_RT_STREAM_NOT_SUPPORT_OPERA,
                    "aclmdlRICaptureBegin: the default stream cannot be captured; create a stream");
    if ((int)mode < 0 || (int)mode > 2)
        return fail(E_INVALID_PARAM, "aclmdlRICaptureBegin: unknown capture mode %d", (int)mode);
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    if (st->cap)
        return fail(E_RT_CAPTURE_MODE_NOT_SUPPORT, "aclmdlRICaptureBegin: the stream is already being captured");
    if (st->updating)
        return fail(E_RT_CAPTURE_MODE_NOT_SUPPORT, "aclmdlRICaptureBegin: the stream is inside a task update");
    /* work queued before the capture is not part of it; it still runs in order before anything the graph does */
    Graph *g = new Graph();
    g->ctx = t_ctx;
    g_graphs.insert(g);
    st->cap.reset(new Capture());
    st->cap->graph = g;
    st->cap->mode = mode;
    st->cap->thread = std::this_thread::get_id();
    if (mode == ACL_MODEL_RI_CAPTURE_MODE_GLOBAL) g_global_captures++;
    if (mode == ACL_MODEL_RI_CAPTURE_MODE_THREAD_LOCAL) t_local_captures++;
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclmdlRICaptureGetInfo(aclrtStream stream, aclmdlRICaptureStatus *status, aclmdlRI *modelRI) {
    Stream *st;
    int rc = resolve_stream(stream, &st);
    if (rc) return rc;
    if (!status) return fail(E_INVALID_PARAM, "aclmdlRICaptureGetInfo: status is null");
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    if (!st->cap) {
        *status = ACL_MODEL_RI_CAPTURE_STATUS_NONE;
        if (modelRI) *modelRI = nullptr;
    } else {
        *status = st->cap->invalidated ? ACL_MODEL_RI_CAPTURE_STATUS_INVALIDATED : ACL_MODEL_RI_CAPTURE_STATUS_ACTIVE;
        if (modelRI) *modelRI = st->cap->graph;
    }
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclmdlRICaptureEnd(aclrtStream stream, aclmdlRI *modelRI) {
    Stream *st;
    int rc = resolve_stream(stream, &st);
    if (rc) return rc;
    if (!modelRI) return fail(E_INVALID_PARAM, "aclmdlRICaptureEnd: modelRI is null");
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    if (!st->cap) return fail(E_RT_STREAM_NOT_CAPTURED, "aclmdlRICaptureEnd: the stream is not being captured");
    Capture &c = *st->cap;
    if (c.mode != ACL_MODEL_RI_CAPTURE_MODE_RELAXED && c.thread != std::this_thread::get_id())
        return fail(E_RT_STREAM_CAPTURE_WRONG_THREAD,
                    "aclmdlRICaptureEnd from another thread than aclmdlRICaptureBegin");
    if (c.mode == ACL_MODEL_RI_CAPTURE_MODE_GLOBAL) g_global_captures--;
    if (c.mode == ACL_MODEL_RI_CAPTURE_MODE_THREAD_LOCAL) t_local_captures--;
    std::unique_ptr<Capture> done(std::move(st->cap));
    if (done->invalidated) {
        done->graph->alive = false;
        *modelRI = nullptr;
        return fail(E_RT_STREAM_CAPTURE_INVALIDATED, "aclmdlRICaptureEnd: the capture was invalidated: %s",
                    done->why.c_str());
    }
    if (done->group_begin >= 0) {
        done->graph->alive = false;
        return fail(E_RT_STREAM_CAPTURE_INVALIDATED, "aclmdlRICaptureEnd: a task group was begun and not ended");
    }
    *modelRI = done->graph;
    count([&](Counters &t) { t.graph_captures++; });
    return ACL_SUCCESS;
}

static int live_graph(aclmdlRI m, Graph **out) {
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    Graph *g = (Graph *)m;
    if (!g_graphs.count(g) || !g->alive) return fail(E_RT_INVALID_HANDLE, "model %p is not a live captured model", m);
    *out = g;
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclmdlRIExecuteAsync(aclmdlRI modelRI, aclrtStream stream) {
    Graph *g;
    Stream *st;
    int rc = live_graph(modelRI, &g);
    if (rc || (rc = resolve_stream(stream, &st))) return rc;
    if (st->cap) return fail(E_RT_CAPTURE_MODE_NOT_SUPPORT, "aclmdlRIExecuteAsync on a stream that is being captured");
    rc = enqueue(stream, TaskKind::Replay, "graph replay", [g](std::string &err) {
        bool outer = t_replaying;
        t_replaying = true;
        int r = 0;
        size_t n;
        {
            std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
            n = g->tasks.size();
        }
        for (size_t i = 0; i < n && !r; i++) {
            GTask t;
            {
                std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
                t = g->tasks[i];
            }
            r = t.fn(err);
            if (r)
                err = "replayed task " + std::to_string(i) + " (" + t.name + "): " + err;
            else if (t.kind == TaskKind::Op)
                count([&](Counters &c) {
                    c.replayed_launches++;
                    c.ops[t.name].replayed++;
                });
        }
        t_replaying = outer;
        return r;
    });
    if (!rc) count([&](Counters &t) { t.graph_replays++; });
    return rc;
}

EMU_EXPORT aclError aclmdlRIExecute(aclmdlRI modelRI, int32_t timeout) {
    (void)timeout;
    Stream *st;
    int rc = resolve_stream(nullptr, &st);
    if (rc || (rc = aclmdlRIExecuteAsync(modelRI, nullptr))) return rc;
    drain(st, last_seq(st));
    return take_sticky(st);
}

EMU_EXPORT aclError aclmdlRIDestroy(aclmdlRI modelRI) {
    Graph *g;
    int rc = live_graph(modelRI, &g);
    if (rc) return rc;
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    g->alive = false;
    g->tasks.clear();
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclmdlRICaptureTaskGrpBegin(aclrtStream stream) {
    Stream *st;
    int rc = resolve_stream(stream, &st);
    if (rc) return rc;
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    if (!st->cap)
        return fail(E_RT_STREAM_NOT_CAPTURED, "aclmdlRICaptureTaskGrpBegin: the stream is not being captured");
    if (st->cap->group_begin >= 0)
        return fail(E_RT_CAPTURE_MODE_NOT_SUPPORT, "aclmdlRICaptureTaskGrpBegin: a task group is already open");
    st->cap->group_begin = (long)st->cap->graph->tasks.size();
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclmdlRICaptureTaskGrpEnd(aclrtStream stream, aclrtTaskGrp *handle) {
    Stream *st;
    int rc = resolve_stream(stream, &st);
    if (rc) return rc;
    if (!handle) return fail(E_INVALID_PARAM, "aclmdlRICaptureTaskGrpEnd: handle is null");
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    if (!st->cap) return fail(E_RT_STREAM_NOT_CAPTURED, "aclmdlRICaptureTaskGrpEnd: the stream is not being captured");
    if (st->cap->group_begin < 0)
        return fail(E_RT_STREAM_CAPTURE_UNMATCHED, "aclmdlRICaptureTaskGrpEnd without aclmdlRICaptureTaskGrpBegin");
    TaskGroup *tg = new TaskGroup{st->cap->graph, (size_t)st->cap->group_begin, st->cap->graph->tasks.size()};
    st->cap->group_begin = -1;
    g_groups.insert(tg);
    *handle = tg;
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclmdlRICaptureTaskUpdateBegin(aclrtStream stream, aclrtTaskGrp handle) {
    Stream *st;
    int rc = resolve_stream(stream, &st);
    if (rc) return rc;
    std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
    TaskGroup *tg = (TaskGroup *)handle;
    if (!g_groups.count(tg) || !tg->graph->alive)
        return fail(E_RT_INVALID_HANDLE, "task group %p is not a live task group", handle);
    if (st->cap)
        return fail(E_RT_CAPTURE_MODE_NOT_SUPPORT, "aclmdlRICaptureTaskUpdateBegin on a stream that is being captured");
    if (st->updating)
        return fail(E_RT_CAPTURE_MODE_NOT_SUPPORT,
                    "aclmdlRICaptureTaskUpdateBegin: an update is already open on this stream");
    st->updating = tg;
    st->update_tasks.clear();
    return ACL_SUCCESS;
}

EMU_EXPORT aclError aclmdlRICaptureTaskUpdateEnd(aclrtStream stream) {
    Stream *st;
    int rc = resolve_stream(stream, &st);
    if (rc) return rc;
    std::vector<Task> tasks;
    TaskGroup *tg;
    {
        std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
        if (!st->updating)
            return fail(E_RT_STREAM_CAPTURE_UNMATCHED,
                        "aclmdlRICaptureTaskUpdateEnd without aclmdlRICaptureTaskUpdateBegin");
        tg = st->updating;
        st->updating = nullptr;
        tasks.swap(st->update_tasks);
        if (!tasks.empty()) { /* an empty update leaves the group unchanged (the official sample's first iteration) */
            size_t n = tg->end - tg->begin;
            if (tasks.size() != n)
                return fail(E_INVALID_PARAM, "aclmdlRICaptureTaskUpdateEnd: %zu tasks re-issued for a group of %zu",
                            tasks.size(), n);
            for (size_t i = 0; i < n; i++)
                if (tasks[i].name != tg->graph->tasks[tg->begin + i].name)
                    return fail(E_INVALID_PARAM, "aclmdlRICaptureTaskUpdateEnd: task %zu is %s, the group holds %s", i,
                                tasks[i].name.c_str(), tg->graph->tasks[tg->begin + i].name.c_str());
        }
    }
    if (tasks.empty()) return ACL_SUCCESS;
    auto shared = std::make_shared<std::vector<Task>>(std::move(tasks));
    /* asynchronous: the group's tasks are replaced when the update stream reaches this point */
    rc = enqueue(stream, TaskKind::Update, "task update", [tg, shared](std::string &) {
        std::lock_guard<std::recursive_mutex> lk(g_obj_mu);
        for (size_t i = 0; i < shared->size(); i++) tg->graph->tasks[tg->begin + i].fn = (*shared)[i].fn;
        return 0;
    });
    if (!rc) count([&](Counters &t) { t.task_updates++; });
    return rc;
}

/* ---- emulator-only hooks (not part of CANN) */

/* End one decode step for the "steps" list of the counters file (tests call it through ctypes). */
EMU_EXPORT void aswemu_mark_step(void) {
    std::lock_guard<std::mutex> lk(stats().mu);
    if (stats().step_deltas.size() < kMaxDeltas)
        stats().step_deltas.push_back(counters_json(stats().total, &stats().at_last_step));
    stats().at_last_step = stats().total;
}

/* Write the counters file now (it is also written at exit). */
EMU_EXPORT void aswemu_write_stats(void) {
    write_stats();
}
