//! `hull-vmm` command line.

fn main() {
    eprintln!("hull-vmm: not implemented yet");
    std::process::exit(2);
}
