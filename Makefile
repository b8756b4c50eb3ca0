# Hull: the two commands are `make demo` (set up, then run the demo) and `make test`.
.PHONY: setup install demo test test-unit test-lab kernel image kvm-check

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
