# Script mode (cmake -DSRC=<source dir> -DOUT=<header> -P BuildCommit.cmake), run at every build:
# writes the commit the binaries are built from into OUT, touching it only when it changes, so
# a binary carried to another machine (a GPU machine, say, whose checkout's .git may be stale or
# absent) still records its own source in every result row (provenance column build_commit).
set(commit "unknown")
execute_process(COMMAND git -C "${SRC}" rev-parse HEAD OUTPUT_VARIABLE head RESULT_VARIABLE rc
                OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(rc EQUAL 0 AND head)
  set(commit "${head}")
  execute_process(COMMAND git -C "${SRC}" status --porcelain --untracked-files=no OUTPUT_VARIABLE changes
                  RESULT_VARIABLE rc2 ERROR_QUIET)
  if(rc2 EQUAL 0 AND changes)
    set(commit "${commit}-dirty")
  endif()
endif()
set(text "#pragma once\n#define ABLATE_BUILD_COMMIT \"${commit}\"\n")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
endif()
if(NOT old STREQUAL text)
  file(WRITE "${OUT}" "${text}")
endif()
