//! The container file system behaves like a local one under Hull as under runc: the rm -rf reproduction, a POSIX conformance suite and stress cases on the container root and on a volume (issue 14).

#[allow(unused_imports)]
use super::*;
