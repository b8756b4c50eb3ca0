# Hull: the two commands are `make demo` (set up, then run the demo) and `make test`.
.PHONY: setup install demo test test-unit test-lab kernel image kvm-check bench

setup:
	@scripts/setup.sh

install: setup
	@scripts/install.sh --print-cri

demo: setup
	@scripts/demo.sh

test: setup
	@scripts/test.sh all

test-unit:
	@scripts/test.sh unit

test-lab:
	@scripts/test.sh lab

kernel:
	@kernel-config/build.sh

image:
	@rootfs/build.sh

kvm-check:
	@scripts/kvm-check.sh

# Isolation benchmark, Hull vs runc/crun (bench/README.md); in the lab unless this host has hardware KVM.
bench: setup
	@bench/run.sh
