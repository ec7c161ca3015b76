# kq_component(NAME DIR [DEPS ...]): compiles every .c file in DIR (globbed,
# so new files need no CMake edit) once, into the object library NAME_obj.
# libkqsvd takes the objects of every component; NAME is a static archive of
# the same objects for unit tests that link just what they test (with DEPS).
function(kq_component name dir)
  cmake_parse_arguments(ARG "" "" "DEPS" ${ARGN})
  file(GLOB sources CONFIGURE_DEPENDS ${dir}/*.c)
  if(NOT sources)
    message(FATAL_ERROR "kq_component(${name}): no sources in ${dir}")
  endif()
  add_library(${name}_obj OBJECT ${sources})
  target_include_directories(${name}_obj PUBLIC ${PROJECT_SOURCE_DIR}/include ${dir})
  target_link_libraries(${name}_obj PUBLIC ${ARG_DEPS})
  add_library(${name} STATIC $<TARGET_OBJECTS:${name}_obj>)
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR}/include ${dir})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS} Threads::Threads m)
  set_property(GLOBAL APPEND PROPERTY KQ_LIBRARY_OBJECTS $<TARGET_OBJECTS:${name}_obj>)
endfunction()
