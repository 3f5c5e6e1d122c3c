//! Per-core glommio runtime (see mod docs below).
