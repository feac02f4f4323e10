//! Small helpers every layer may use, knowing nothing of petal's domain: wall-clock time,
//! hashing, files written whole or not at all, size-limited byte streams, and server-wide
//! budgets. Nothing here imports another petal module except `error`.
pub mod budget;
pub mod clock;
pub mod files;
pub mod hash;
pub mod streams;
