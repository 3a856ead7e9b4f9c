// Build metadata baked into the binary: setup.py generates stmodels_build_info_generated.h (torch
// version, CUDA version, archs, flags, as one JSON string) into the build tree before compiling.
#pragma once

#if __has_include("stmodels_build_info_generated.h")
#include "stmodels_build_info_generated.h"
#endif

namespace stmodels {
#ifdef STMODELS_BUILD_INFO_JSON
constexpr const char* kBuildInfoJson = STMODELS_BUILD_INFO_JSON;
#else
constexpr const char* kBuildInfoJson = "{\"note\": \"built without setup.py metadata\"}";
#endif
}  // namespace stmodels
