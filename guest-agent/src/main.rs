//! The `hull-agent` binary: the agent lives in the library (`lib.rs`), which
//! its fuzz targets share.

fn main() {
    hull_agent::main();
}
