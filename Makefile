# Hull: the two commands are `make demo` (set up, then run the demo) and `make test`.
.PHONY: setup demo test test-unit test-lab kernel image kvm-check

setup:
	@scripts/setup.sh

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
