//! Policy as code (SPEC "Policy as code"): the scope map tested like code (`scopegate test`:
//! cases run through the proxy's own `decide`), and two maps compared by what they allow
//! (`scopegate diff`, and the log of every hot reload).

pub mod cases;
pub mod diff;
pub mod token;
