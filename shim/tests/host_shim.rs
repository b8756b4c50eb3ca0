//! Host tier: drives the shim (with its `fake` test-double backend) through a real containerd.
