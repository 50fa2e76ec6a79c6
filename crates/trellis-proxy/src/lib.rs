//! Trellis data plane.
