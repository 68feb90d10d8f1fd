/* cann_loader.cpp — dlopen the CANN libraries and resolve every function of cann_api.h (see cann_loader.h). */
#include "cann_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <vector>

namespace {

const char *const kInstallHint =
    "install the CANN toolkit (>= 8.0; the CANN 8.5 ops packages for the split operator libraries) and source its "
    "set_env.sh, or point ASW_CANN_LIB_DIR or ASCEND_HOME_PATH at it";

/* directories to try before the loader's own search, in order */
std::vector<std::string> search_dirs() {
    std::vector<std::string> dirs;
    if (const char *d = std::getenv("ASW_CANN_LIB_DIR"); d != nullptr && *d != '\0') dirs.emplace_back(d);
    if (const char *d = std::getenv("ASCEND_HOME_PATH"); d != nullptr && *d != '\0')
        dirs.emplace_back(std::string(d) + "/lib64");
    return dirs;
}

/* dlopen `name` from the first directory that has it, else by bare name. NULL if nowhere; *why gets dlerror(). */
void *open_library(const char *name, std::string *why) {
    for (const std::string &dir : search_dirs()) {
        std::string path = dir + "/" + name;
        if (void *h = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL)) return h;
        const char *e = dlerror();
        /* a library that exists but fails to load is an error worth reporting as is */
        if (e != nullptr && std::string(e).find("No such file") == std::string::npos) {
            *why = e;
            return nullptr;
        }
    }
    if (void *h = dlopen(name, RTLD_NOW | RTLD_GLOBAL)) return h;
    const char *e = dlerror();
    *why = e != nullptr ? e : "not found";
    return nullptr;
}

struct loaded {
    cann_api api{};
    std::string error;
    bool ok = false;
};

bool resolve(void *lib, const char *lib_name, const char *sym, void **slot, std::string *error) {
    dlerror();
    *slot = dlsym(lib, sym);
    if (*slot != nullptr) return true;
    *error = std::string("CANN symbol ") + sym + " not found in " + lib_name + ": this CANN is too old or incomplete; " +
             kInstallHint;
    return false;
}

void load_all(loaded *L) {
    std::string why;
    void *ascendcl = open_library("libascendcl.so", &why);
    if (ascendcl == nullptr) {
        L->error = "cannot load libascendcl.so (" + why + "): " + kInstallHint;
        return;
    }
    void *nnopbase = open_library("libnnopbase.so", &why);
    if (nnopbase == nullptr) {
        L->error = "cannot load libnnopbase.so (" + why + "): " + kInstallHint;
        return;
    }
    /* operator libraries: the split ones (CANN >= 8.5) first, libopapi.so as the fallback */
    struct oplib {
        const char *name;
        void *h;
    } ops[] = {{"libopapi_math.so", nullptr}, {"libopapi_nn.so", nullptr}, {"libopapi_transformer.so", nullptr},
               {"libopapi.so", nullptr}};
    bool any = false;
    std::string op_why;
    for (oplib &o : ops) {
        o.h = open_library(o.name, &why);
        if (o.h != nullptr) any = true;
        else op_why += std::string(op_why.empty() ? "" : "; ") + o.name + ": " + why;
    }
    if (!any) {
        L->error = "cannot load any ACLNN operator library (" + op_why + "): " + kInstallHint;
        return;
    }

#define CANN_RESOLVE_(lib, lib_name)                                                                            \
    [&](const char *sym, void **slot) { return resolve(lib, lib_name, sym, slot, &L->error); }
    auto rt = CANN_RESOLVE_(ascendcl, "libascendcl.so");
    auto nn = CANN_RESOLVE_(nnopbase, "libnnopbase.so");
#undef CANN_RESOLVE_
#define CANN_RT_(ret, name, params)                                                                             \
    if (!rt(#name, reinterpret_cast<void **>(&L->api.name))) return;
    CANN_ASCENDCL_FUNCS(CANN_RT_)
#undef CANN_RT_
#define CANN_NN_(ret, name, params)                                                                             \
    if (!nn(#name, reinterpret_cast<void **>(&L->api.name))) return;
    CANN_NNOPBASE_FUNCS(CANN_NN_)
#undef CANN_NN_

    /* an operator: its own split library first (first = index into ops), then the others, then libopapi.so */
    auto op = [&](int first, const char *sym, void **slot) {
        int order[4] = {first, (first + 1) % 3, (first + 2) % 3, 3};
        for (int i : order) {
            if (ops[i].h == nullptr) continue;
            dlerror();
            if ((*slot = dlsym(ops[i].h, sym)) != nullptr) return true;
        }
        L->error = std::string("ACLNN operator ") + sym + " not found in " + ops[first].name +
                   " (nor in the other operator libraries or libopapi.so): " + kInstallHint;
        return false;
    };
#define CANN_OP_(lib_index)                                                                                     \
    [&](const char *sym, void **slot) { return op(lib_index, sym, slot); }
    auto math = CANN_OP_(0);
    auto nnop = CANN_OP_(1);
    auto tf = CANN_OP_(2);
#undef CANN_OP_
#define CANN_MATH_(ret, name, params)                                                                           \
    if (!math(#name, reinterpret_cast<void **>(&L->api.name))) return;
#define CANN_NNOP_(ret, name, params)                                                                           \
    if (!nnop(#name, reinterpret_cast<void **>(&L->api.name))) return;
#define CANN_TF_(ret, name, params)                                                                             \
    if (!tf(#name, reinterpret_cast<void **>(&L->api.name))) return;
    CANN_OPAPI_MATH_FUNCS(CANN_MATH_)
    CANN_OPAPI_NN_FUNCS(CANN_NNOP_)
    CANN_OPAPI_TRANSFORMER_FUNCS(CANN_TF_)
#undef CANN_MATH_
#undef CANN_NNOP_
#undef CANN_TF_
    L->ok = true;
}

}  // namespace

const cann_api *cann_load(std::string *error) {
    static loaded L;
    static std::once_flag once;
    std::call_once(once, load_all, &L);
    if (!L.ok) {
        *error = L.error;
        return nullptr;
    }
    return &L.api;
}
