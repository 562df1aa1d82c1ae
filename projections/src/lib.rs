//! Projection workers that build the read models from the event stream.
//!
//! Empty for now: the read side (relay, projections, read models) is the
//! next piece of work. The order process manager, the one consumer of the
//! log so far, lives in `command-api` because it issues commands.
