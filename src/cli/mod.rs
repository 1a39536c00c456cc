//! The command line's work, apart from argument parsing (`main.rs`): the route table of
//! `check`, `explain`, minting tokens and keys, and the demo.

pub mod demo;
pub mod explain;
pub mod mint;
pub mod openapi;
pub mod table;
