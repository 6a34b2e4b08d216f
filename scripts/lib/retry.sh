# Sourced by the scripts that download (setup.sh, prepare-smollm2.sh, cuda-compile-check.sh).
# Downloads here are large (torch with its CUDA libraries is about 4 GB from PyPI) and a
# connection sometimes drops mid-file: pip resumes within an attempt (PIP_RESUME_RETRIES; pips
# older than 25.1 ignore it), and `retry CMD...` runs a failed step again whole, up to 4 times.
export PIP_RESUME_RETRIES=${PIP_RESUME_RETRIES:-25}
retry() {
  local attempt
  for attempt in 1 2 3 4; do
    "$@" && return 0
    [ "$attempt" -lt 4 ] || break
    printf '\n== failed (attempt %s of 4), again in %s s: %s\n' "$attempt" $((attempt * 20)) "$*" >&2
    sleep $((attempt * 20))
  done
  return 1
}
