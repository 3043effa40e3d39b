# Bulwark: `make run` sets up and runs everything on this host; `make test` sets up and runs the tests.
VENV    := .venv
PY      := $(VENV)/bin/python
SYSPY   := /usr/bin/python3
STAMP   := $(VENV)/.setup-done

.PHONY: setup run test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup-system.sh $(wildcard shared/proto/*.proto)
	bash scripts/setup-system.sh
	test -x $(PY) || $(SYSPY) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m shared.protogen
	$(PY) -c "import bcc" || (echo "bcc does not import in $(VENV)"; exit 1)
	touch $(STAMP)

run: setup
	$(VENV)/bin/bulwark up

test: setup
	$(PY) -m pytest -ra $(PYTEST_ARGS)

bench: setup
	for b in bench/*.py; do case $$b in *_common.py) continue;; esac; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) shared/proto_gen
