// mixq's version, parsed by CMakeLists.txt: keep the three defines in this form.
#pragma once

#define MIXQ_VERSION_MAJOR 0
#define MIXQ_VERSION_MINOR 1
#define MIXQ_VERSION_PATCH 0
