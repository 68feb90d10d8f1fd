/* The CANN declarations the emulator implements: the project's own native/src/aclnn/cann_api.h (one X-macro list
 * shared with the aclnn backend). With -DASW_EMU_VENDOR_HEADERS the runtime types come from Huawei's own
 * <acl/acl.h> first (tests/test_cann_headers.py does this), so every runtime function the emulator defines must
 * match the vendor's declaration or the build fails with a conflicting-declaration error. */
#ifndef ASW_EMU_API_H
#define ASW_EMU_API_H

#if defined(ASW_EMU_VENDOR_HEADERS)
#include <acl/acl.h>
#define ASW_CANN_VENDOR_RT_TYPES 1
#endif
#include "../src/aclnn/cann_api.h"

#endif
