//! Placeholder: this crate arrives with a later issue (see DESIGN.md).
