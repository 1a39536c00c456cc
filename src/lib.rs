//! scopegate: an edge reverse proxy that enforces OAuth 2.0 scopes from JWT access tokens.
//!
//! Flow: config file -> `config` (plain data) -> `snapshot` (compiled, immutable) -> per request
//! `decision::decide` -> `proxy` carries it out.

pub mod admin;
pub mod cache;
pub mod config;
pub mod decision;
pub mod demo;
pub mod explain;
pub mod jwks;
pub mod keys;
pub mod metrics;
pub mod mint;
pub mod path;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod token;
