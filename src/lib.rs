//! scopegate: an edge reverse proxy that enforces OAuth 2.0 scopes from JWT access tokens.
//!
//! One direction of flow, and the tree shows it:
//! `config` (plain data) -> `compile` -> {`auth`, `routing`, `upstream`} -> `snapshot` ->
//! `decision` -> `policy` (tests and diffs of the scope map) -> `edge` (Pingora) -> the binary
//! (`cli`, `main.rs`).

pub mod auth;
pub mod cli;
pub mod compile;
pub mod config;
pub mod decision;
pub mod edge;
pub mod openapi;
pub mod policy;
pub mod quota;
pub mod routing;
pub mod sender;
pub mod shared_state;
pub mod snapshot;
pub mod trusted;
pub mod upstream;
