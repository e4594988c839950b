#!/bin/sh
# A tour of the analytics API with curl: track a play and a stop, read them back as metrics and
# sessions, see the validation errors and the metadata size limit, export events and erase a
# user, retry an event safely with an event_id, and send batches as JSON and as NDJSON. Each response is printed under a "== "
# heading, followed by its HTTP status.
#
#   ./examples.sh                                  # against http://127.0.0.1:8000
#   BASE_URL=https://analytics.example.com ./examples.sh
#   USER_ID=user456 ./examples.sh                  # another user (letters, digits, - and _)
#   ANALYTICS_KEY=ak_... ./examples.sh             # a server that needs keys: a key with the
#                                                  # ingest, read and admin scopes, sent as a
#                                                  # Bearer token
#
# Needs only sh, curl and date (GNU coreutils, BusyBox or BSD/macOS). For a server with a
# self-signed certificate, point curl at it: CURL_CA_BUNDLE=/path/to/cert.pem ./examples.sh
set -eu

BASE_URL=${BASE_URL:-http://127.0.0.1:8000}
BASE_URL=${BASE_URL%/}
USER_ID=${USER_ID:-user123}
ANALYTICS_KEY=${ANALYTICS_KEY:-}
DAY=86400

# utc EPOCH FORMAT: an instant given in seconds since 1970, formatted in UTC.
if date -u -d @0 +%Y >/dev/null 2>&1; then
  utc() { date -u -d "@$1" "+$2"; }    # GNU coreutils, BusyBox
else
  utc() { date -u -r "$1" "+$2"; }     # BSD, macOS
fi

NOW=$(date -u +%s)
TODAY=$(utc "$NOW" %Y-%m-%d)
WEEK_START=$(utc $((NOW - 6 * DAY)) %Y-%m-%d)      # the last 7 days, today included
MONTH_START=$(utc $((NOW - 29 * DAY)) %Y-%m-%d)    # the last 30 days, today included
PLAY_AT=$(utc $((NOW - 180)) %Y-%m-%dT%H:%M:%SZ)   # a song played 3 minutes ago...
STOP_AT=$(utc $((NOW - 60)) %Y-%m-%dT%H:%M:%SZ)    # ...and stopped 2 minutes later
# Part of every event_id the tour sends: the same event_id of the same user is stored only once,
# so each run needs its own (the epoch seconds, and the process id for runs in the same second).
RUN_ID=$NOW-$$

# request TITLE METHOD PATH [BODY [CONTENT_TYPE]]: print the heading, the request, the response
# body and the status. The body is sent as CONTENT_TYPE, application/json by default. curl
# succeeds on 4xx/5xx answers (they are part of the tour); it fails, and so does the script, when
# the server cannot be reached.
request() {
  printf '\n== %s\n%s %s\n' "$1" "$2" "$BASE_URL$3"
  if [ $# -ge 4 ]; then
    printf '%s' "$4" | api_curl -sS --max-time 30 -X "$2" "$BASE_URL$3" \
      -H "Content-Type: ${5:-application/json}" --data-binary @- -w '\nHTTP %{http_code}\n'
  else
    api_curl -sS --max-time 30 -X "$2" "$BASE_URL$3" -w '\nHTTP %{http_code}\n'
  fi
}

# api_curl ARGS...: curl, with the access key when one is given (never printed).
api_curl() {
  if [ -n "$ANALYTICS_KEY" ]; then
    curl -H "Authorization: Bearer $ANALYTICS_KEY" "$@"
  else
    curl "$@"
  fi
}

request "Track a play event" POST /track "{
  \"event\": \"play\",
  \"user_id\": \"$USER_ID\",
  \"timestamp\": \"$PLAY_AT\",
  \"metadata\": {\"song_id\": \"song456\", \"device\": \"mobile\", \"platform\": \"ios\"}
}"

request "Track a stop event" POST /track "{
  \"event\": \"stop\",
  \"user_id\": \"$USER_ID\",
  \"timestamp\": \"$STOP_AT\",
  \"metadata\": {\"song_id\": \"song456\"}
}"

request "Metrics for the last 7 days, by day, for $USER_ID" GET \
  "/metrics?start_date=$WEEK_START&end_date=$TODAY&group_by=day&user_id=$USER_ID"

request "Sessions for the last 30 days, by week" GET \
  "/sessions?start_date=$MONTH_START&end_date=$TODAY&group_by=week"

request "Active users for the last 30 days, by week" GET \
  "/active-users?start_date=$MONTH_START&end_date=$TODAY&group_by=week"

request "Error: an invalid date" GET "/metrics?start_date=2024-13-45&end_date=$TODAY"

request "Error: a missing date" GET "/metrics?end_date=$TODAY"

# 5000 bytes of text: over the 4096-byte metadata limit, so the server keeps a notice instead.
LARGE=$(head -c 5000 /dev/zero | tr '\000' x)
request "Metadata over the size limit" POST /track "{
  \"event\": \"profile_update\",
  \"user_id\": \"$USER_ID\",
  \"metadata\": {\"bio\": \"$LARGE\"}
}"

# Raw events out: a range as CSV (or NDJSON, the default), and one user's events. An id with a
# "/" or a space goes into a path percent-encoded (%2F, %20); this guest is then erased, which
# removes its events from the metrics and sessions at once.
GUEST_ID="$USER_ID/guest $RUN_ID"
GUEST_PATH=$(printf '%s' "$GUEST_ID" | sed 's|/|%2F|g; s| |%20|g')
request "Track an event of a user whose id has a slash and a space" POST /track "{
  \"event\": \"play\",
  \"user_id\": \"$GUEST_ID\"
}"
request "Export the last 7 days of $USER_ID as CSV" GET \
  "/events?start_date=$WEEK_START&end_date=$TODAY&user_id=$USER_ID&format=csv"
request "Every event of that user, as NDJSON" GET "/users/$GUEST_PATH/events"
request "Erase that user" DELETE "/users/$GUEST_PATH"

# An event_id makes a retry safe: the same request sent twice stores the event once, and the
# second answer says "duplicate": true.
LIKE="{
  \"event\": \"like\",
  \"user_id\": \"$USER_ID\",
  \"event_id\": \"like-$RUN_ID\",
  \"metadata\": {\"song_id\": \"song456\"}
}"
request "Track with an event_id" POST /track "$LIKE"
request "Track the same event_id again (a duplicate)" POST /track "$LIKE"

# Three events in one request: the first is stored, the second is rejected (a date without a
# time), the third repeats the first one's event_id. Answer: accepted 1, duplicates 1, and
# rejected lists index 1 with the reason.
request "Batch: one good, one invalid, one repeated event_id" POST /track/batch "{\"events\": [
  {\"event\": \"skip\", \"user_id\": \"$USER_ID\", \"event_id\": \"skip-$RUN_ID\", \"metadata\": {\"song_id\": \"song456\"}},
  {\"event\": \"skip\", \"user_id\": \"$USER_ID\", \"timestamp\": \"$TODAY\"},
  {\"event\": \"skip\", \"user_id\": \"$USER_ID\", \"event_id\": \"skip-$RUN_ID\", \"metadata\": {\"song_id\": \"song456\"}}
]}"

# The same endpoint reads newline-delimited JSON: one event object a line.
request "Batch as NDJSON" POST /track/batch "\
{\"event\": \"page_view\", \"user_id\": \"$USER_ID\", \"metadata\": {\"page\": \"/pricing\"}}
{\"event\": \"page_view\", \"user_id\": \"$USER_ID\", \"metadata\": {\"page\": \"/signup\"}}
" application/x-ndjson
