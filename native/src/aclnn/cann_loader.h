/* cann_loader.h — the CANN entry points of cann_api.h, resolved at run time with dlopen/dlsym.
 *
 * Nothing of CANN is linked: the backend library only depends on libc/libstdc++/libdl, so a machine without CANN
 * can still build and load it (and gets one clear error when a model is opened on it).
 */
#ifndef ASW_CANN_LOADER_H
#define ASW_CANN_LOADER_H

#include <string>

#include "cann_api.h"

/* one pointer per function of cann_api.h, named like the function */
struct cann_api {
#define CANN_MEMBER_(ret, name, params) name##_fn name;
    CANN_ALL_FUNCS(CANN_MEMBER_)
#undef CANN_MEMBER_
};

/* Open the libraries (once per process; later calls return the same table). Search order for each library:
 * $ASW_CANN_LIB_DIR, $ASCEND_HOME_PATH/lib64, then the dynamic loader's own search (LD_LIBRARY_PATH, ld.so.cache).
 * Operators are looked up in the CANN 8.5 split libraries (libopapi_math/nn/transformer.so) first and in
 * libopapi.so as the fallback. Returns NULL and sets *error (the library or symbol missing, what to install). */
const cann_api *cann_load(std::string *error);

#endif /* ASW_CANN_LOADER_H */
