//! S3 protocol layer (see DESIGN.md).
