#!/bin/bash
# Passes a command's output through (only the lines matching PATTERN, if given) and, while
# nothing is shown, says every 10 s how long it has been running: make setup and the demo are
# never silent for long.
#   some command 2>&1 | bash tools/heartbeat.sh ['^(run |epoch )']
pattern=${1:-}
started=$SECONDS said=$SECONDS
while true; do
  wait=$((10 - (SECONDS - said)))
  IFS= read -r -t $((wait > 0 ? wait : 1)) line && status=0 || status=$?
  [ "$status" -eq 0 ] || [ "$status" -gt 128 ] || break  # end of input
  if [ "$status" -eq 0 ] && { [ -z "$pattern" ] || [[ $line =~ $pattern ]]; }; then
    echo "$line"; said=$SECONDS
  elif [ $((SECONDS - said)) -ge 10 ]; then
    echo "   ... $((SECONDS - started)) s"; said=$SECONDS
  fi
done
