# Helpers sourced by the launch scripts (not run on its own).

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
