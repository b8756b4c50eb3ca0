//! `hull-vmm` as a library: building and running one KVM microVM.
