//! A guest that floods the console, OOM events or vsock, or an agent that stops answering, cannot exhaust or stall the host side (issue 16, holes 5 to 7).

#[allow(unused_imports)]
use super::*;
