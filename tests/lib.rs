//! Workspace-level tests live next to this file (`dependency_rule.rs`, ...); the library is empty.
