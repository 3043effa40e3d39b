# Bulwark: `make run` sets up and runs everything on this host; `make test` sets up and runs the tests.
VENV    := .venv
PY      := $(VENV)/bin/python
SYSPY   := /usr/bin/python3
STAMP   := $(VENV)/.setup-done

.PHONY: setup run test test-kernels check bench clean

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

# KubeArmor's own end-to-end scenarios and Ginkgo specs against the stack on Docker, with a table of
# verdicts (tests/kubearmor_suite); `make test` runs them too, this target runs only them.
test-kubearmor: setup
	$(PY) -m pytest -p no:cacheprovider -v tests/kubearmor_suite $(PYTEST_ARGS)

# The lint and type gate (configured in pyproject.toml): ruff, then mypy.
check: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The kernel lab: the host natively, then every kernel of scripts/kernel-lab/matrix in a QEMU guest,
# each running the kernel and end-to-end tests; the table goes to docs/kernels.md. One kernel:
# `make test-kernels KLAB_SUITES=bullseye`, or `BULWARK_KLAB_SUITES=bullseye .venv/bin/pytest -m vm tests/vm`.
KLAB_RESULTS ?= /var/tmp/bulwark-kernel-lab
KLAB_SUITES  ?= all
KLAB_TESTS   ?= tests/kernel tests/e2e
test-kernels: setup
	rm -rf $(KLAB_RESULTS); mkdir -p $(KLAB_RESULTS)/host
	BULWARK_KLAB_PROBE=1 $(PY) -m tests.vm.lab host $(KLAB_RESULTS)/host "$(KLAB_TESTS)"; echo $$? > $(KLAB_RESULTS)/host/status
	BULWARK_KLAB_PROBE=1 BULWARK_KLAB_SUITES=$(KLAB_SUITES) BULWARK_KLAB_RESULTS=$(KLAB_RESULTS) BULWARK_KLAB_TESTS="$(KLAB_TESTS)" \
	  $(PY) -m pytest -p no:cacheprovider -ra -m vm tests/vm; echo $$? > $(KLAB_RESULTS)/vm-status
	mkdir -p docs; $(PY) -m tests.vm.lab table $(KLAB_RESULTS) > docs/kernels.md.new
	mv docs/kernels.md.new docs/kernels.md; cat docs/kernels.md
	test "$$(cat $(KLAB_RESULTS)/host/status)" = 0 && test "$$(cat $(KLAB_RESULTS)/vm-status)" = 0

bench: setup
	for b in bench/*.py; do case $$b in *_common.py) continue;; esac; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) shared/proto_gen
