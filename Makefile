# edge-gateway — every developer and CI entry point. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Debian packages the tests drive for real (broker and its clients, pty pairs) and `make image` needs.
# mosquitto-clients: `make demo` suggests mosquitto_pub, and its test runs that command.
# etcd-server: config/etcd and the fleet tests start real etcd members (Debian 12: 3.4.23).
APT_TEST_PKGS  := mosquitto mosquitto-clients socat systemd etcd-server
APT_IMAGE_PKGS := genimage rauc squashfs-tools dosfstools mtools fdisk e2fsprogs openssl
# `make vm-image` / `make vm-test` (tools/vm/README.md): the Debian userland, GRUB EFI, OVMF, QEMU/KVM.
APT_VM_PKGS    := mmdebstrap grub-efi-amd64-bin grub-common ovmf qemu-system-x86
# `make bench` only: Node-RED (tools/peers/node-red, npm ci into build/peers/) for the peer comparison.
APT_BENCH_PKGS := nodejs npm

.PHONY: help venv test lint demo fleet-demo bench fuzz hil soak powercut image vm-image vm-test buildroot-check systemd-check clean

help:
	@echo "make demo    simulator + local Mosquitto + gateway on config/, values flowing"
	@echo "make fleet-demo   3-member etcd, three gateways, one edge-cfg push all three apply, fleet status"
	@echo "make test    everything CI runs (.ci/run calls it): app tests, then make hil"
	@echo "make venv    .venv/ with the app and dev tools, pinned by requirements.lock"
	@echo "make lint    ruff + mypy + import contracts (app/.importlinter)"
	@echo "make bench   benchmarks, report in build/bench/"
	@echo "make fuzz    seeded fuzzers (tools/fuzz/fuzz_*.py), JSON summaries in build/fuzz/"
	@echo "make hil     hardware-in-the-loop suite against the PLC simulator (short)"
	@echo "make soak    long soak runs"
	@echo "make powercut   100 real power cuts under the gateway (root; ext4 loop device), build/powercut/"
	@echo "make image   SD card image + signed RAUC bundle in build/image/"
	@echo "make vm-image  bootable x86-64 VM test image + v2 and broken OTA bundles in build/vm/image/"
	@echo "make vm-test   boot it under QEMU/KVM: READY, watchdog, power cuts, A/B OTA; build/vm/report.json"
	@echo "make systemd-check   systemd-analyze verify + security on systemd/"
	@echo "make buildroot-check BUILDROOT=DIR   defconfigs + check-package against Buildroot 2026.02.3"

venv: $(STAMP)

$(STAMP): requirements.lock app/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "need Python >= 3.11"; exit 1; }
	@tools/ensure-debian-packages $(APT_TEST_PKGS) $(APT_IMAGE_PKGS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e app
	@touch $@

test: venv
	cd app && ../$(PY) -m pytest -q
	$(MAKE) --no-print-directory fuzz FUZZ_ARGS="$(FUZZ_SHORT)"
	$(MAKE) --no-print-directory hil
	@if why=$$(tools/vm/kvm-probe); then $(MAKE) --no-print-directory vm-test; \
	else echo "make vm-test SKIPPED: $$why (run it by hand: make vm-test, about 25 min under TCG)"; fi

lint: venv
	$(VENV)/bin/ruff check app tools hil-tests
	$(VENV)/bin/ruff format --check app tools hil-tests
	cd app && ../$(VENV)/bin/mypy edge_gateway
	cd app && ../$(VENV)/bin/lint-imports --config .importlinter --no-cache

DEMO_SECONDS ?= 0
demo: venv
	$(PY) tools/demo.py $(if $(filter-out 0,$(DEMO_SECONDS)),--seconds $(DEMO_SECONDS))

# tools/fleet_demo.py: every process it starts is ended by PID before it returns.
fleet-demo: venv
	$(PY) tools/fleet_demo.py

# Full run about 25 min (measured: bench_e2e 3.3 min, bench_peers 12.5 min); `make bench BENCH_ARGS=--quick` 8 min.
BENCH_ARGS ?=
bench: venv
	@tools/ensure-debian-packages $(APT_BENCH_PKGS)
	@mkdir -p build/bench
	@for b in tools/bench/bench_*.py; do echo "== $$b"; $(PY) $$b --out build/bench $(BENCH_ARGS) || exit 1; done
	$(PY) tools/bench/report.py build/bench

# Every tools/fuzz/fuzz_*.py takes --seed N --count N --out DIR, writes DIR/<name>.json and exits 1 on
# any failure. The full run: ≥ 500 inputs each; `make test` runs the short form (about 100, < 60 s).
FUZZ_ARGS  ?= --seed 1 --count 500
FUZZ_SHORT ?= --seed 1 --count 100
fuzz: venv
	@mkdir -p build/fuzz
	@for f in tools/fuzz/fuzz_*.py; do echo "== $$f $(FUZZ_ARGS)"; $(PY) $$f --out build/fuzz $(FUZZ_ARGS) || exit 1; done

# The HIL suite (hil-tests/README.md): the real gateway process against the simulator or, with
# HIL_ARGS="--serial /dev/ttyUSB0 --plc 192.168.1.10:502", real devices.
HIL_ARGS ?=
hil: venv
	cd hil-tests && ../$(PY) -m pytest -q --soak-seconds 20 $(HIL_ARGS)

SOAK_SECONDS ?= 600
SOAK_RATE    ?= 5000
soak: venv
	cd hil-tests && ../$(PY) -m pytest -q -s -k test_soak --soak-seconds $(SOAK_SECONDS) --soak-rate $(SOAK_RATE) --outage 30 --soak-report ../build/hil/soak.json $(HIL_ARGS)
	@cat build/hil/soak.json

# Real power cuts (hil-tests/README.md, "Power cuts"): ext4 on a loop device, EXT4_IOC_SHUTDOWN
# NOLOGFLUSH, remount. Needs root. POWERCUT_CUTS power cuts under the running gateway, then the
# WAL-level test with as many; figures in build/powercut/report.json and build/powercut/wal.json.
POWERCUT_CUTS ?= 100
POWERCUT_SEED ?= 14
powercut: venv
	@mkdir -p build/powercut
	cd hil-tests && ../$(PY) -m pytest -q -s test_powercut.py --cuts $(POWERCUT_CUTS) --powercut-seed $(POWERCUT_SEED) --powercut-report ../build/powercut/report.json $(HIL_ARGS)
	cd app && POWERCUT_CUTS=$(POWERCUT_CUTS) POWERCUT_SEED=$(POWERCUT_SEED) ../$(PY) -m pytest -q -s tests/bus/test_powercut.py
	@$(PY) -c 'import json; r = json.load(open("build/powercut/report.json")); r.pop("per_cut"); print("gateway:", json.dumps(r)); print("wal:    ", open("build/powercut/wal.json").read().replace(chr(10), " "))'

image: venv
	@tools/ensure-debian-packages $(APT_IMAGE_PKGS)
	tools/image/build-image build/image

vm-image: venv
	@tools/ensure-debian-packages $(APT_IMAGE_PKGS)
	@tools/vm/ensure-packages $(APT_VM_PKGS)
	tools/vm/build-image

VM_TEST_ARGS ?=
vm-test: vm-image
	$(PY) tools/vm/vm_test.py --out build/vm $(VM_TEST_ARGS)

BUILDROOT ?=
buildroot-check:
	tools/image/buildroot-check $(BUILDROOT)

systemd-check: venv
	tools/image/check-units systemd rootfs-overlay/etc/systemd/system

clean:
	rm -rf build .venv app/*.egg-info
