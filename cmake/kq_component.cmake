# kq_component(NAME DIR [OUTSIDE_LIBRARY] [DEPS ...]): compiles every .c file
# in DIR (globbed, so new files need no CMake edit) once, into the object
# library NAME_obj. libkqsvd takes the objects of every component (unless
# OUTSIDE_LIBRARY); NAME is a static archive of the same objects for unit
# tests that link just what they test (with DEPS). Symbols are hidden unless
# a public header marks them KQ_API, so libkqsvd exports only its API.
function(kq_component name dir)
  cmake_parse_arguments(ARG "OUTSIDE_LIBRARY" "" "DEPS" ${ARGN})
  file(GLOB sources CONFIGURE_DEPENDS ${dir}/*.c)
  if(NOT sources)
    message(FATAL_ERROR "kq_component(${name}): no sources in ${dir}")
  endif()
  add_library(${name}_obj OBJECT ${sources})
  target_include_directories(${name}_obj PUBLIC ${PROJECT_SOURCE_DIR}/include ${dir})
  target_link_libraries(${name}_obj PUBLIC ${ARG_DEPS})
  set_target_properties(${name}_obj PROPERTIES C_VISIBILITY_PRESET hidden)
  add_library(${name} STATIC $<TARGET_OBJECTS:${name}_obj>)
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR}/include ${dir})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS} Threads::Threads m)
  if(NOT ARG_OUTSIDE_LIBRARY)
    set_property(GLOBAL APPEND PROPERTY KQ_LIBRARY_OBJECTS $<TARGET_OBJECTS:${name}_obj>)
  endif()
endfunction()
