# Sourced by .ci/run (bash): PostgreSQL for the tests. Installs Debian's postgresql when missing
# (as root), starts a throwaway server on 127.0.0.1 in a temp folder (tests/pg.py) and exports
# REWARDLAB_TEST_PG_URL, its admin URL; every test then makes its own fresh database there.
# Without PostgreSQL the PostgreSQL cases skip and say why; the rest of the suite still runs.
_rl_py=${PYTHON:-python3}
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing PostgreSQL from Debian's packages"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
      || echo "apt-get install postgresql failed: PostgreSQL tests will be skipped"
  else
    echo "PostgreSQL not installed and not root: PostgreSQL tests will be skipped"
  fi
fi
REWARDLAB_PG_DIR=$(mktemp -d /tmp/rewardlab-ci-pg.XXXXXX)
if _rl_url=$("$_rl_py" tests/pg.py start "$REWARDLAB_PG_DIR"); then
  export REWARDLAB_TEST_PG_URL="$_rl_url"
  echo "PostgreSQL for the tests: $REWARDLAB_TEST_PG_URL"
else
  echo "could not start PostgreSQL: PostgreSQL tests will be skipped"
fi
rewardlab_pg_stop() { "$_rl_py" tests/pg.py stop "$REWARDLAB_PG_DIR"; rm -rf "$REWARDLAB_PG_DIR"; }
