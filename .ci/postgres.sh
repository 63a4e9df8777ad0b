# Sourced by .ci/run (bash): PostgreSQL for the tests. Installs Debian's postgresql when missing
# (as root; `make postgres`), starts a throwaway server on 127.0.0.1 in a temp folder (tests/pg.py) and exports
# REWARDLAB_TEST_PG_URL, its admin URL; every test then makes its own fresh database there.
# Without PostgreSQL the PostgreSQL cases skip and say why; the rest of the suite still runs.
_rl_py=${PYTHON:-python3}
make -s postgres || echo "installing PostgreSQL failed: PostgreSQL tests will be skipped"
REWARDLAB_PG_DIR=$(mktemp -d /tmp/rewardlab-ci-pg.XXXXXX)
if _rl_url=$("$_rl_py" tests/pg.py start "$REWARDLAB_PG_DIR"); then
  export REWARDLAB_TEST_PG_URL="$_rl_url"
  echo "PostgreSQL for the tests: $REWARDLAB_TEST_PG_URL"
else
  echo "could not start PostgreSQL: PostgreSQL tests will be skipped"
fi
rewardlab_pg_stop() { "$_rl_py" tests/pg.py stop "$REWARDLAB_PG_DIR"; rm -rf "$REWARDLAB_PG_DIR"; }
