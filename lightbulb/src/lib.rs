//! Lightbulb: answers "which model serves this request?" out of the payload path.
//!
//! The resolver, its gRPC API and the client library arrive with the Lightbulb issue; the
//! crate exists now so the workspace has its final shape.
