# Helpers sourced by the launch scripts (not run on its own).

usage() {  # the calling script's header comment, then exit (status $1, default 2)
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

die() { echo "${0##*/}: $*" >&2; exit 2; }

quote() {  # the arguments as one shell line, quoting only the words that need it
  local words=() word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then words+=("$word")
    elif [[ "$word" != *\'* ]]; then words+=("'$word'")
    elif [[ "$word" != *[\"\\\`]* ]]; then words+=("\"${word//\$/\\\$}\"")
    else words+=("'${word//\'/\'\\\'\'}'"); fi
  done
  printf '%s\n' "${words[*]}"
}
