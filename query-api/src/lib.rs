//! The query API (port 8081).
//!
//! Empty for now: it is built together with the read models it serves.
