//! Broadcast chain (see DESIGN.md).
