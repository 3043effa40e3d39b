#!/bin/sh
# First start: initdb (scram-sha-256), create $POSTGRES_USER / $POSTGRES_DB; then run postgres in the foreground.
set -eu
: "${POSTGRES_USER:=bulwark}" "${POSTGRES_DB:=bulwark}" "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" --auth=scram-sha-256 --encoding=UTF8 >/dev/null
  rm -f "$pwfile"
  if [ "$POSTGRES_DB" != postgres ]; then
    postgres --single -D "$PGDATA" -c listen_addresses= -c unix_socket_directories=/tmp postgres \
      >/dev/null <<SQL
CREATE DATABASE "$POSTGRES_DB" OWNER "$POSTGRES_USER";
SQL
  fi
fi
exec postgres -D "$PGDATA" -c "listen_addresses=$PGLISTEN" -c "port=$PGPORT" -c unix_socket_directories=/var/run/postgresql
