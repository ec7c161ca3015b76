# Install rules: libkqsvd, the public headers, the backend modules next to
# the library (where the core looks for them), a pkg-config file and a CMake
# package (find_package(kqsvd) -> kqsvd::kqsvd). Both are relocatable, so
# `cmake --install build --prefix ANYWHERE` gives a usable tree.
include(CMakePackageConfigHelpers)

# The CLI links the library statically and finds the backend modules in the
# library folder relative to itself (host/cli/main.c), so it needs no RPATH.

install(TARGETS kqsvd EXPORT kqsvdTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${PROJECT_SOURCE_DIR}/include/kqsvd.h ${PROJECT_SOURCE_DIR}/include/kqsvd_backend.h
              ${PROJECT_SOURCE_DIR}/include/kqsvd_vulkan.h ${PROJECT_SOURCE_DIR}/include/kqsvd_opencl.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

# Backend modules: libkqsvd-NAME.so beside libkqsvd.
foreach(module kqsvd-vulkan kqsvd-opencl)
  if(TARGET ${module})
    install(TARGETS ${module} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
  endif()
endforeach()

# pkg-config: prefix computed from the .pc file's own location.
set(kq_dl_flag "")
if(CMAKE_DL_LIBS)
  set(kq_dl_flag "-l${CMAKE_DL_LIBS}")
endif()
file(RELATIVE_PATH kq_pc_to_prefix "/kq/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/kq")
string(REGEX REPLACE "/$" "" kq_pc_to_prefix "${kq_pc_to_prefix}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/kqsvd.pc.in ${CMAKE_BINARY_DIR}/kqsvd.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/kqsvd.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# CMake package.
set(kq_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/kqsvd)
install(EXPORT kqsvdTargets NAMESPACE kqsvd:: DESTINATION ${kq_cmake_dir})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/kqsvdConfig.cmake.in
  ${CMAKE_BINARY_DIR}/kqsvdConfig.cmake INSTALL_DESTINATION ${kq_cmake_dir})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/kqsvdConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/kqsvdConfig.cmake ${CMAKE_BINARY_DIR}/kqsvdConfigVersion.cmake
  DESTINATION ${kq_cmake_dir})
