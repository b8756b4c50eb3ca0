//! Lab tests: they boot real guests and need a KVM that can run a standard kernel.
