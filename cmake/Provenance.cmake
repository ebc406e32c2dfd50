# Build facts recorded in every result row (provenance). The git commit is read at run time,
# not here, so a rebuild is not needed to stamp a new commit.
set(ABLATE_COMPILER "${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION}")
