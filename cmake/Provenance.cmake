# Build facts recorded in every result row (provenance). The checkout's git commit is read at run
# time (git_commit, git_dirty: the configs and data a run reads); the commit the binaries were
# built from is stamped at every build (build_commit, by BuildCommit.cmake), so the two can differ
# when a binary travels or the tree moves on without a rebuild.
set(ABLATE_COMPILER "${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION}")
set(ABLATE_GENERATED_DIR "${PROJECT_BINARY_DIR}/generated")
add_custom_target(ablate_build_commit ALL
  COMMAND ${CMAKE_COMMAND} -DSRC=${PROJECT_SOURCE_DIR} -DOUT=${ABLATE_GENERATED_DIR}/build_commit.h
          -P ${PROJECT_SOURCE_DIR}/cmake/BuildCommit.cmake
  BYPRODUCTS ${ABLATE_GENERATED_DIR}/build_commit.h
  COMMENT "Stamping the build commit")
