# Finds xsimd. Debian's xsimd 8.1 exports a target that links a plain "xtl" although its
# headers only need xtl with XSIMD_ENABLE_XTL_COMPLEX; without xtl-dev that becomes "-lxtl"
# and links fail. Use xtl when installed, otherwise stand in an empty interface target.
if(NOT TARGET xtl)
  find_package(xtl QUIET)
endif()
if(NOT TARGET xtl)
  add_library(xtl INTERFACE IMPORTED)
endif()
find_package(xsimd REQUIRED)
