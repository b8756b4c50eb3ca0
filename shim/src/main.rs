//! `containerd-shim-hull-v2`: the containerd shim v2 of Hull.

fn main() {
    eprintln!("containerd-shim-hull-v2: not implemented yet");
    std::process::exit(2);
}
