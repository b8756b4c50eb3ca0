//! A guest that plants symlinks, setuid files or device nodes in the pod share cannot make the host create, change or mount anything outside the pod's directory (issue 16, holes 3 and 4).

#[allow(unused_imports)]
use super::*;
