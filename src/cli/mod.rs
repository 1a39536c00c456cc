//! The command line's work, apart from argument parsing (`main.rs`): the route table of
//! `check`, `explain`, minting tokens, keys and DPoP proofs, and the demo.

pub mod demo;
pub mod dpop;
pub mod explain;
pub mod mint;
pub mod openapi;
pub mod table;
