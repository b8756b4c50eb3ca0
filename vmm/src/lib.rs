//! `hull-vmm` as a library: building and running one KVM microVM.

pub mod boot;
pub mod builder;
pub mod config;
pub mod control;
pub mod cpuid;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod jail;
pub mod memory;
pub mod mptable;
pub mod seccomp;
pub mod test_image;
pub mod vcpu;
pub mod vmm;
