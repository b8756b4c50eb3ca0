//! Helpers shared by Hull's integration and lab tests.
