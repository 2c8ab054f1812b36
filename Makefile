# The snapdel patch queue: libvirt 11.3.0 + our series, built and run privately
# in a Debian trixie root (scripts/trixie-root.sh) with trixie's toolchain and
# QEMU 10.0; this machine fetches the base and applies and lints the series.
#
#   make run      install, build, start a private virtqemud + demo VM
#   make check    every test: unit (meson test incl. syntax-check), series
#                 lint, per-patch check, Debian apply check, end-to-end,
#                 the Debian packages (make deb, make deb-check)
#
# Developer workflow:
#   make tree     git tree at build/libvirt: tag 'base' plus the series as commits
#   make export   re-export patches/ from that tree (reproducible)
#   make shell    a shell in the trixie root set up for the private daemon
#                 (virsh, qemu-img, python3); 'make shell CMD="virsh list"'
#   make env      its shell exports (for use in the root): eval "$(make -s env)"
#   make stop     stop the daemons; running VMs keep running
#   make deb      trixie's libvirt .debs with the series, in build/debs
#   make deb-check  install them in a fresh copy of the trixie root and run
#                 e2e tests and virt-manager against the packaged daemon
#                 (both are part of make check)
#   make deb-check-stock  the same with Debian's own packages (no series)
#   make bench    time snapshot deletes: unpatched base vs. build/prefix vs. dd
#                 (not part of make check; BENCH_REPS=5)
#   make soak     random walks of snapshot operations over many seeds
#                 (not part of make check; SOAK_SEEDS=30 from SOAK_FIRST=1000,
#                 or a list like SOAK_SEEDS=5,7-9; SOAK_STEPS=60)

SHELL := /bin/bash
S := scripts
E2E ?= tests/e2e
PYTEST_ARGS ?=
CMD ?=
SOAK_SEEDS ?= 30
SOAK_FIRST ?= 1000
SOAK_STEPS ?= 60

.PHONY: run stop status env shell deps base tree build export check unit lint \
        check-series check-debian e2e soak bench deb deb-check deb-check-stock clean distclean

run: build
	@$(S)/daemon.sh start
	@$(S)/demo.sh

stop:
	@$(S)/daemon.sh stop

status:
	@$(S)/daemon.sh status

env:
	@$(S)/env.sh

shell:
	@$(S)/shell.sh $(CMD)

deps:
	@$(S)/deps.sh

base: deps
	@$(S)/fetch-base.sh

tree: base
	@$(S)/tree.sh

build: tree
	@$(S)/build.sh

export:
	@$(S)/export.sh

check: build
	@$(MAKE) --no-print-directory lint unit
	@$(S)/check.sh

unit:
	@$(S)/unit.sh

lint:
	@$(S)/lint-series.sh

check-series:
	@$(S)/check-series.sh

check-debian:
	@$(S)/check-debian.sh

deb: tree
	@$(S)/deb.sh

deb-check: deb
	@$(S)/deb-check.sh $(PYTEST_ARGS)

deb-check-stock:
	@SNAPDEL_DEB_STOCK=1 $(S)/deb-check.sh $(PYTEST_ARGS)

e2e:
	@$(S)/e2e.sh $(E2E) $(PYTEST_ARGS)

# tests/e2e/test_random_walk.py over SOAK_SEEDS seeds (a count from
# SOAK_FIRST, or a list of seeds and ranges), SOAK_STEPS random steps each;
# goes on after a failing seed (each failure prints its seed and steps).
soak:
	@seeds='$(SOAK_SEEDS)'; \
	case $$seeds in *[-,]*) ;; *) seeds=$(SOAK_FIRST)-$$(( $(SOAK_FIRST) + $$seeds - 1 ));; esac; \
	echo "==> soak: seeds $$seeds, $(SOAK_STEPS) steps each"; \
	SNAPDEL_WALK_SEEDS=$$seeds SNAPDEL_WALK_STEPS_N=$(SOAK_STEPS) \
	$(MAKE) --no-print-directory e2e E2E=tests/e2e/test_random_walk.py \
		PYTEST_ARGS='-k test_random_walk -q -rf $(PYTEST_ARGS)'

# Measures the installed build/prefix as it is (no 'build' prerequisite: the
# work tree may be mid-edit); builds only the unpatched base, under the lock.
bench:
	@$(S)/bench.sh

clean:
	@$(S)/daemon.sh stop || true
	rm -rf build/libvirt/build build/prefix build/series-check

distclean:
	@$(S)/daemon.sh stop || true
	rm -rf build
